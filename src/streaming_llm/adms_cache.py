"""Seed 000's module path for ADMS: ``from streaming_llm.adms_cache import ADMSConfig, ADMSKVCache``.

Both live in :mod:`streaming_llm.policies.adms` (``ADMSKVCache`` in its ``cache`` module); this
module re-exports them.
"""

from __future__ import annotations

from .policies.adms import ADMSConfig
from .policies.adms.cache import ADMSKVCache

__all__ = ["ADMSConfig", "ADMSKVCache"]
