"""Positional strategies: how the cache re-positions kept keys.

In transformers 5.x ``Cache.update()`` receives keys already rotated at their absolute positions
(and the query is rotated at its absolute position too). StreamingLLM measures distances inside
the cache instead: with ``m`` stored slots and the current chunk starting at absolute position
``P``, slot ``j`` must look as if it sat at position ``P - m + j``. For RoPE that is one more
rotation of the stored key by ``delta_j = (P - m + j) - original_position_j``; rotations compose,
so we rotate from the key as received (never cumulatively, so no error builds up in bf16).

Only the strategy for rotate-half RoPE (Llama, Mistral, Qwen2) exists so far; every other family
raises :class:`UnsupportedModelError` naming the supported ones.
"""

from __future__ import annotations

from typing import Protocol

import torch


class UnsupportedModelError(ValueError):
    """The model's architecture has no positional strategy (yet)."""


class PositionStrategy(Protocol):
    def shift_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move ``keys`` ``(B, H, L, D)`` by ``delta`` positions: ``(L,)`` for every head or
        ``(H, L)`` per head (int64, CPU)."""


#: model_type values whose attention applies rotate-half RoPE with a fixed inverse frequency.
ROTATE_HALF_FAMILIES = ("llama", "mistral", "qwen2")

#: RoPE variants whose inverse frequencies do not depend on the sequence length, so a relative
#: re-rotation is exact. "dynamic" and "longrope" rescale with the length seen and are refused.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotateHalfRoPE:
    """RoPE as in Llama: ``k' = k * cos(theta) + rotate_half(k) * sin(theta)`` on the first
    ``2 * len(inv_freq)`` dims (all of them unless the model uses partial rotary).

    The model's ``attention_scaling`` (YaRN) multiplies cos/sin; it is already in the received
    keys, so the extra rotation here is a pure rotation (scale 1).
    """

    def __init__(self, inv_freq: torch.Tensor):
        # float64 angles: delta can reach millions of positions, float32 would lose the phase.
        self.inv_freq = inv_freq.detach().to("cpu", torch.float64)
        self.rotary_dim = 2 * self.inv_freq.numel()

    def cos_sin(self, delta: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        angles = delta.to(torch.float64)[..., None] * self.inv_freq  # (..., L, rotary_dim/2)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(device, torch.float32), angles.sin().to(device, torch.float32)

    def shift_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin(delta, keys.device)  # (L, rotary_dim) or (H, L, rotary_dim)
        rot = keys[..., : self.rotary_dim].float()
        rotated = (rot * cos + _rotate_half(rot) * sin).to(keys.dtype)
        if self.rotary_dim == keys.shape[-1]:
            return rotated
        return torch.cat((rotated, keys[..., self.rotary_dim :]), dim=-1)


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"


def _find_inv_freq(model: torch.nn.Module) -> torch.Tensor:
    """The model's own RoPE inverse frequencies (the ``inv_freq`` buffer of its rotary module)."""
    found = [m.inv_freq for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    distinct = {tuple(t.flatten().tolist()) for t in found}
    if len(distinct) != 1:
        raise UnsupportedModelError(
            f"expected one rotary embedding in the model, found {len(distinct)}; "
            f"supported families: {', '.join(ROTATE_HALF_FAMILIES)}"
        )
    return found[0]


def resolve_position_strategy(model: torch.nn.Module) -> PositionStrategy:
    """Pick the positional strategy for ``model`` or raise :class:`UnsupportedModelError`."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ROTATE_HALF_FAMILIES:
        raise UnsupportedModelError(
            f"position shift is not supported for model_type {model_type!r}; supported: "
            f"{', '.join(ROTATE_HALF_FAMILIES)} (or pass enable_pos_shift=False)"
        )
    rope_type = _rope_type(config)
    if rope_type not in STATIC_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope_type {rope_type!r} rescales frequencies with the sequence length, so keys cannot be "
            f"re-rotated exactly; supported rope types: {', '.join(STATIC_ROPE_TYPES)} "
            "(or pass enable_pos_shift=False)"
        )
    return RotateHalfRoPE(_find_inv_freq(model))
