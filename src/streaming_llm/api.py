"""Public entry points: ``make_cache`` and the seed's ``enable_*`` functions."""

from __future__ import annotations

import torch

from .adms_cache import ADMSKVCache
from .cache import BoundedCache
from .memory import SUFFIX, memory_params
from .policies import PolicyConfig, make_policy_config


def cache_from_config(model: torch.nn.Module, config: PolicyConfig) -> BoundedCache:
    """A fresh cache for ``model`` following an already validated policy ``config``: the cache
    class the policy names (:meth:`PolicyConfig.cache_class`) builds itself from the model.

    Policies that score slots by attention route the model's attention through the hook of
    :mod:`streaming_llm.attention`; ``cache.disable()`` gives the model its own back.
    """
    return config.cache_class().from_model(model, config)


def make_cache(model: torch.nn.Module, policy: str = "streaming", memory: dict | None = None, **params) -> BoundedCache:
    """A fresh bounded cache for ``model``.

    ``policy`` is one of :func:`streaming_llm.list_policies`; ``params`` are that policy's
    parameters (see its config dataclass). ``memory``: parameters of the external memory tier
    (:class:`streaming_llm.memory.MemoryConfig`, e.g. ``{"block_size": 64, "recall_blocks": 4}``),
    which wraps the policy (``policy + "+memory"``). Bad names or values raise ``ValueError``.
    """
    if memory is not None:
        policy, params = policy + SUFFIX, {**params, **memory_params(memory)}
    return cache_from_config(model, make_policy_config(policy, **params))


def enable_streaming_llm(
    model: torch.nn.Module,
    start_size: int = 4,
    recent_size: int = 2000,
    enable_pos_shift: bool = True,
    enable_dynamic_sink: bool = False,
    max_seq_length: int = 32768,
) -> BoundedCache:
    """StreamingLLM for ``model``: a cache keeping ``start_size`` sinks + ``recent_size`` recent tokens.

    Use it with ``model.generate(**inputs, cache=cache)`` (``past_key_values=cache`` before transformers
    5.24) or in a manual token loop.
    A cache holds one stream: build a new one (or ``cache.reset()``) for the next.
    """
    return make_cache(
        model,
        "streaming",
        start_size=start_size,
        recent_size=recent_size,
        enable_pos_shift=enable_pos_shift,
        enable_dynamic_sink=enable_dynamic_sink,
        max_seq_length=max_seq_length,
    )


def enable_adms_llm(model: torch.nn.Module, compressor=None, **params) -> BoundedCache:
    """ADMS for ``model``: sinks + a compressed mid-memory + a recent window (seed 000).

    ``params`` are :class:`streaming_llm.adms_cache.ADMSConfig`'s (seed 000's names and defaults,
    e.g. ``start_size=4, recent_size=2000, compressed_budget=128, compressor_type="low_rank"``).
    ``compressor``: an object with ``compress(K, V) -> (K', V')`` used for every layer and KV head
    (with ``compressor_type="custom"``). Returns an ``ADMSKVCache``.
    """
    return ADMSKVCache(make_policy_config("adms", **params), model, compressor=compressor)
