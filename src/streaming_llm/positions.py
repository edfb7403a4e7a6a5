"""Positional strategies: how the cache re-positions kept keys.

In transformers 5.x ``Cache.update()`` receives keys already rotated at their absolute positions
(and the query is rotated at its absolute position too). StreamingLLM measures distances inside
the cache instead: with ``m`` stored slots and the current chunk starting at absolute position
``P``, slot ``j`` must look as if it sat at position ``P - m + j``. For RoPE that is one more
rotation of the stored key by ``delta_j = (P - m + j) - original_position_j``; rotations compose,
so we rotate from the key as received (never cumulatively, so no error builds up in bf16).

Families whose positions never reach the cached keys (ALiBi adds a bias at attention time,
learned absolute embeddings are added to the input) get :class:`PositionFreeKeys`: there is no
rotation to move or undo. Which strategy a model gets is decided in one place,
:mod:`streaming_llm.architectures`.
"""

from __future__ import annotations

from typing import Protocol

import torch


class UnsupportedModelError(ValueError):
    """The model's architecture has no positional strategy (yet)."""


class PositionStrategy(Protocol):
    #: Whether keys carry their position as a rotation the cache can move (RoPE); when False the
    #: cache never re-rotates and :meth:`shift_keys` returns the keys unchanged.
    rotates_keys: bool

    def shift_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Move ``keys`` ``(B, H, L, D)`` by ``delta`` positions: ``(L,)`` for every head or
        ``(H, L)`` per head (int64, CPU)."""


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotateHalfRoPE:
    """RoPE as in Llama: ``k' = k * cos(theta) + rotate_half(k) * sin(theta)`` on the first
    ``2 * len(inv_freq)`` dims (all of them unless the model uses partial rotary, as GPT-NeoX and
    Phi do: their rotary dims come first and the rest of each head passes through).

    The model's ``attention_scaling`` (YaRN) multiplies cos/sin; it is already in the received
    keys, so the extra rotation here is a pure rotation (scale 1).
    """

    rotates_keys = True

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


class PositionFreeKeys:
    """Keys without a positional rotation (ALiBi, learned absolute positions): nothing to move.

    ADMS compresses "position-free" keys; for these families the keys as stored already are.
    """

    rotates_keys = False

    def shift_keys(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return keys
