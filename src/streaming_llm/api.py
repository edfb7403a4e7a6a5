"""Public entry points: ``make_cache`` and the seed's ``enable_*`` functions."""

from __future__ import annotations

import torch

from . import attention
from .cache import BoundedCache, BoundedLayer
from .policies import PolicyConfig, make_policy_config
from .positions import resolve_position_strategy


def _num_layers(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    num_layers = getattr(text_config, "num_hidden_layers", None)
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError("model.config.num_hidden_layers is missing: is this a transformers decoder model?")
    return num_layers


def cache_from_config(model: torch.nn.Module, config: PolicyConfig) -> BoundedCache:
    """A fresh cache for ``model`` following an already validated policy ``config``.

    Policies that score slots by attention route the model's attention through the hook of
    :mod:`streaming_llm.attention`; ``cache.disable()`` gives the model its own back.
    """
    num_layers = _num_layers(model)
    layer_policies = config.build_layer_policies(num_layers)
    needs_shift = config.enable_pos_shift and any(p.needs_position_shift for p in layer_policies)
    strategy = resolve_position_strategy(model) if needs_shift else None
    layers = [BoundedLayer(policy, strategy) for policy in layer_policies]
    cache = BoundedCache(layers, policy_name=config.name, config=config)
    if cache.needs_attention_hook:
        cache.attach_hook(model)
    return cache


def make_cache(model: torch.nn.Module, policy: str = "streaming", **params) -> BoundedCache:
    """A fresh bounded cache for ``model``.

    ``policy`` is one of :func:`streaming_llm.list_policies`; ``params`` are that policy's
    parameters (see its config dataclass). Bad names or values raise ``ValueError``.
    """
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

    Use it with ``model.generate(**inputs, past_key_values=cache)`` or in a manual token loop.
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


def enable_adms_llm(model: torch.nn.Module, **params) -> BoundedCache:
    """ADMS (three-tier cache with a compressed mid-memory).

    Not implemented yet: it is tracked as its own issue (ADMS) and raises until it lands.
    """
    raise NotImplementedError(
        "ADMS is not implemented yet; use enable_streaming_llm or make_cache(model, policy) with "
        "one of streaming_llm.list_policies()"
    )
