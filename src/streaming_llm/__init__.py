"""streaming_llm: bounded-memory streaming inference for Hugging Face transformers models."""

from .api import cache_from_config, enable_adms_llm, enable_streaming_llm, make_cache
from .cache import BoundedCache, BoundedLayer
from .policies import list_policies, make_policy_config
from .positions import UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "BoundedCache",
    "BoundedLayer",
    "UnsupportedModelError",
    "cache_from_config",
    "enable_adms_llm",
    "enable_streaming_llm",
    "list_policies",
    "make_cache",
    "make_policy_config",
]
