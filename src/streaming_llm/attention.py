"""The attention hook: one attention function registered with ``transformers.AttentionInterface``.

It serves caches whose policies need more than plain attention over the returned slots:

- a per-slot logit bias (a slot standing for ``c`` merged tokens carries ``log(c)``);
- the attention probabilities of this step, handed to the policy so it can score slots
  (H2O's accumulated attention, TOVA's last query, SnapKV's observation window);
- otherwise it is plain ``scaled_dot_product_attention``, no probabilities materialised.

The function is installed per model by :func:`install` (the cache's
:class:`~streaming_llm.session.Session` does it for policies that need it) and removed by
:func:`restore`/:func:`attention_hook`; nothing happens at import time and no model class is patched.

It finds its layer as kvpress does, ``cache.layers[module.layer_idx]``, from the cache the model
call carries: transformers gives the cache to the attention module but not to this function, so the
session's forward pre-hook on the model notes the cache of each call, and :func:`route` maps the
model's attention modules to that session. Without a bounded cache in the call (another cache,
or none) the hook is plain causal attention.

We register no mask function under our name, so transformers builds no mask for us and every
layer gets its own causal-chunk mask here (layers may hold different numbers of slots).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F

ATTENTION_NAME = "streaming_llm"


#: attention module -> the sessions open on its model (one per live cache, usually one)
_ROUTES: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


def route(model: torch.nn.Module, session) -> list[torch.nn.Module]:
    """Let the attention modules of ``model`` (those with a ``layer_idx``) find their layer through
    ``session.carried``, the cache of the running call; returns the modules for :func:`unroute`."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    for module in modules:
        _ROUTES.setdefault(module, []).append(session)
    return modules


def unroute(modules: list[torch.nn.Module], session) -> None:
    for module in modules:
        sessions = _ROUTES.get(module, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            _ROUTES.pop(module, None)


def carried_layer(module: torch.nn.Module):
    """The cache layer ``module`` serves in this call, ``layers[module.layer_idx]`` of the bounded
    cache the model call carries; ``None`` without one."""
    for session in _ROUTES.get(module, ()):
        if session.carried is not None:
            return session.carried.layers[module.layer_idx]
    return None


def chunk_causal_mask(query_length: int, key_length: int, device: torch.device,
                      sliding_window: int | None = None) -> torch.Tensor | None:
    """``(q, n)`` bool mask: query ``i`` sees every earlier slot and the chunk up to itself, and
    with ``sliding_window`` only slots less than ``sliding_window`` slots before it.

    The last ``q`` of the ``n`` slots are the chunk's own tokens. Distances are counted in slots:
    a sliding layer's slots are contiguous, and for a policy layer slot distances are the in-cache
    distances the position shift presents. ``None`` when nothing is masked.
    """
    windowed = sliding_window is not None and key_length > sliding_window
    if query_length == 1 and not windowed:
        return None
    mask = torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(key_length - query_length)
    if windowed:
        mask = mask.triu(key_length - query_length - sliding_window + 1)
    return mask


def _expand_heads(per_kv_head: torch.Tensor, num_query_heads: int) -> torch.Tensor:
    """``(H_kv, n)`` -> ``(1, H_q, 1, n)``: query heads of a GQA group share their KV head's value."""
    return per_kv_head.repeat_interleave(num_query_heads // per_kv_head.shape[0], dim=0)[None, :, None, :]


def grouped_scores(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``query @ key^T`` per query head ``(B, H_q, q, n)`` for grouped keys ``(B, H_kv, n, D)``.

    Query head ``h`` reads KV head ``h // group`` (transformers' ``repeat_kv`` order), so the
    ``group`` query heads of a KV head are stacked along the query axis and multiplied with that
    head's keys once, instead of copying the keys ``group`` times.
    """
    batch, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    stacked = query.reshape(batch, kv_heads, (heads // kv_heads) * q, dim)
    return torch.matmul(stacked, key.transpose(-1, -2)).reshape(batch, heads, q, key.shape[-2])


def grouped_values(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``probs @ value`` ``(B, H_q, q, D)`` for probabilities ``(B, H_q, q, n)`` over grouped
    values ``(B, H_kv, n, D)`` (see :func:`grouped_scores`)."""
    batch, heads, q, n = probs.shape
    kv_heads = value.shape[1]
    stacked = probs.reshape(batch, kv_heads, (heads // kv_heads) * q, n)
    return torch.matmul(stacked, value).reshape(batch, heads, q, value.shape[-1])


def _join_recalled(recalled, key, value, mask, bias):
    """Keys/values with the recalled ``(1, H_kv, R, D)`` slots first; the mask and bias widened to match."""
    recalled_keys, recalled_values = recalled
    r = recalled_keys.shape[-2]
    if mask is not None:
        mask = torch.cat([mask.new_ones(mask.shape[0], r), mask], dim=-1)
    if bias is not None:
        bias = torch.cat([bias.new_zeros(bias.shape[0], r), bias], dim=-1)
    return torch.cat([recalled_keys, key], dim=-2), torch.cat([recalled_values, value], dim=-2), mask, bias


def bounded_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over the slots a bounded cache layer returned. Shapes: query ``(B, H_q, q, D)``,
    key/value ``(B, H_kv, n, D)``; returns ``((B, q, H_q, D), None)`` like transformers' functions.

    The arguments come in the order of transformers' ``sdpa_attention_forward`` (``dropout`` before
    ``scaling``): transformers passes both by name, but wrappers of every registered attention
    function (kvpress's ``attention_patch``, applied when kvpress is imported) pass ``dropout`` by
    position."""
    if kwargs.get("softcap"):
        raise NotImplementedError("the streaming_llm attention hook does not support soft-capped attention logits (Gemma-2) yet")
    if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        raise ValueError("padding is not supported: BoundedCache holds one stream (batch size 1, no padding)")
    layer = carried_layer(module)
    q_len, n = query.shape[-2], key.shape[-2]
    mask = chunk_causal_mask(q_len, n, query.device, kwargs.get("sliding_window"))
    bias = layer.attention_bias() if layer is not None else None
    active_key, recalled = key, (layer.recall(query, n, key[..., -q_len:, :]) if layer is not None else None)
    if recalled is not None:  # memory tier: R recalled slots before the active ones, visible to every query
        key, value, mask, bias = _join_recalled(recalled, key, value, mask, bias)
    if layer is None or not layer.policy.needs_attention:
        if bias is not None:
            bias = _expand_heads(bias.to(query.dtype), query.shape[1])
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = grouped_scores(query, key).float() * scale  # (B, H_q, q, n)
    if bias is not None:
        scores = scores + _expand_heads(bias.float(), query.shape[1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    read = layer.policy.read_mask(query, active_key)
    if read is not None:
        scores[..., -n:] = scores[..., -n:].masked_fill(~read, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = grouped_values(probs.to(value.dtype), value)
    layer.after_attention(probs[..., -n:])  # the policy scores its own slots only
    return out.transpose(1, 2).contiguous(), None


def install(model: torch.nn.Module) -> str:
    """Route ``model``'s attention through :func:`bounded_attention`; returns the previous implementation."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, bounded_attention)
    previous = model.config._attn_implementation
    if previous != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)
    return previous


def restore(model: torch.nn.Module, previous: str) -> None:
    """Give ``model`` back the attention implementation it had before :func:`install`."""
    if model.config._attn_implementation != previous:
        model.set_attn_implementation(previous)


def uses_hook(model: torch.nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME


@contextlib.contextmanager
def attention_hook(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``with attention_hook(model): ...`` runs with the hook and restores the model afterwards."""
    previous = install(model)
    try:
        yield model
    finally:
        restore(model, previous)
