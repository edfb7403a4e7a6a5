"""Public entry points: ``make_cache`` and the seed's ``enable_*`` functions."""

from __future__ import annotations

import torch

from .architectures import ModelLayout, describe_model
from .cache import BoundedCache, BoundedLayer
from .memory import SUFFIX, attach_memory, is_memory_config, memory_params
from .policies import PolicyConfig, make_policy_config
from .policies.sliding_window import KeepLast
from .positions import UnsupportedModelError


def _own_window_layer(layout: ModelLayout, layer_idx: int) -> BoundedLayer:
    # W - 1 slots, as transformers' DynamicSlidingWindowLayer: the new token makes the window W.
    # The slots stay contiguous with the newest token, so they never need re-rotating.
    return BoundedLayer(KeepLast(layout.sliding_window - 1), None, layout.layer_types[layer_idx], is_sliding=True)


def build_layers(model: torch.nn.Module, config: PolicyConfig, layout: ModelLayout | None = None) -> list[BoundedLayer]:
    """One fresh :class:`BoundedLayer` per decoder layer of ``model`` following ``config``.

    In a hybrid model (Gemma-3) sliding layers keep their own window and ``config`` governs the
    full-attention layers (see :class:`streaming_llm.architectures.ModelLayout`).
    """
    layout = layout or describe_model(model)
    governed = layout.governed_layers()
    policies = dict(zip(governed, config.build_layer_policies(len(governed))))
    needs_shift = config.enable_pos_shift and any(p.needs_position_shift for p in policies.values())
    needs_rotary = any(p.needs_rotary for p in policies.values())
    strategies = layout.position_strategies() if needs_shift or needs_rotary else None
    layers = []
    for i in range(layout.num_layers):
        if i not in policies:
            layers.append(_own_window_layer(layout, i))
            continue
        policy, strategy = policies[i], strategies[i] if strategies else None
        if policy.needs_rotary:
            policy.bind_rotary(strategy)
        shift = strategy if needs_shift and strategy.rotates_keys else None
        layers.append(BoundedLayer(policy, shift, layout.layer_types[i]))
    return layers


def attach_model_hooks(cache: BoundedCache, model: torch.nn.Module, layout: ModelLayout) -> None:
    """Install what ``cache`` needs on ``model``: the attention hook for policies that score
    attention, in-cache input positions for learned absolute positions; ``cache.disable()`` undoes both."""
    if cache.needs_attention_hook:
        if not layout.routes_attention:
            raise UnsupportedModelError(
                f"policy {cache.policy_name!r} needs attention scores through transformers' AttentionInterface, "
                f"which {layout.family.name} attention does not use; policies that run on it: those without "
                "attention scores or logit biases (full, sliding_window, streaming, adms with "
                "compressor_type=low_rank and importance_metric=value_norm)"
            )
        cache.attach_hook(model)
    if cache.config is not None and cache.config.enable_pos_shift and layout.remaps_input_positions:
        cache.attach_position_inputs(model, layout.max_positions)


def cache_from_config(model: torch.nn.Module, config: PolicyConfig) -> BoundedCache:
    """A fresh cache for ``model`` following an already validated policy ``config``.

    Policies that score slots by attention route the model's attention through the hook of
    :mod:`streaming_llm.attention`; ``cache.disable()`` gives the model its own back.
    """
    cache_class = config.cache_class()
    layout = describe_model(model)
    if cache_class is not BoundedCache:
        cache = cache_class(config, model)
    else:
        cache = BoundedCache(build_layers(model, config, layout), policy_name=config.name, config=config)
    if is_memory_config(config):
        attach_memory(cache, layout)
    attach_model_hooks(cache, model, layout)
    return cache


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
    from .adms_cache import ADMSKVCache

    return ADMSKVCache(make_policy_config("adms", **params), model, compressor=compressor)
