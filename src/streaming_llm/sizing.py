"""Equal-memory comparisons: size any bounded policy to a given number of cache bytes.

A slot of one layer costs its keys and values (``2 * H_kv * D`` elements in the model's
dtype), its int64 position per KV head, and whatever per-slot state its policy keeps (H2O's
scores, SnapKV's observation-window rows). A policy sized to ``cache_bytes`` gets
``floor(cache_bytes / (num_layers * bytes_per_slot))`` slots per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_int
from .architectures import describe_model
from .policies import PolicyConfig
from .policies.base import POSITION_BYTES

@dataclass(frozen=True)
class KVGeometry:
    """Shapes that set a slot's cost. ``num_layers`` counts the layers a policy governs; a hybrid
    model's sliding layers (Gemma-3) keep their own window of ``own_window_slots`` slots in all."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    element_bytes: int
    own_window_slots: int = 0

    @classmethod
    def of(cls, model: torch.nn.Module) -> "KVGeometry":
        layout = describe_model(model)
        own = sum(layout.sliding_window - 1 for i in range(layout.num_layers) if layout.keeps_own_window(i))
        dtype = next(model.parameters()).dtype
        element_bytes = torch.empty((), dtype=dtype).element_size()
        return cls(len(layout.governed_layers()), layout.num_kv_heads, layout.head_dim, element_bytes, own)

    def bytes_per_slot(self, config: PolicyConfig) -> int:
        """Bytes one slot of one layer costs under ``config``."""
        kv = 2 * self.num_kv_heads * self.head_dim * self.element_bytes
        return kv + self.num_kv_heads * POSITION_BYTES + config.state_bytes_per_slot(self.num_kv_heads)

    def own_window_bytes(self) -> int:
        """Bytes of the own-window layers once full (plain K/V rows and positions, no policy state)."""
        return self.own_window_slots * (2 * self.head_dim * self.element_bytes + POSITION_BYTES) * self.num_kv_heads


def size_to_bytes(config: PolicyConfig, model: torch.nn.Module, cache_bytes: int) -> PolicyConfig:
    """``config`` resized so the whole cache holds at most ``cache_bytes`` bytes (a hybrid model's
    own-window layers take their fixed share first; the policy's layers split the rest)."""
    check_int("cache_bytes", cache_bytes, 1)
    geometry = KVGeometry.of(model)
    left = cache_bytes - geometry.own_window_bytes()
    if left < 1:
        raise ValueError(
            f"cache_bytes={cache_bytes} does not cover the {geometry.own_window_bytes()} bytes the model's "
            "sliding-window layers hold by themselves"
        )
    return config.sized_to_bytes(geometry, left // geometry.num_layers)


def cache_bytes_of(config: PolicyConfig, model: torch.nn.Module) -> int:
    """Most bytes a cache following ``config`` holds on ``model`` (with the sliding layers' own
    windows): the memory that an equal-memory comparison gives every other policy. Unbounded
    policies raise ``ValueError``."""
    geometry = KVGeometry.of(model)
    return config.max_cache_bytes(geometry) + geometry.own_window_bytes()


def size_for_comparison(config: PolicyConfig, model: torch.nn.Module, cache_bytes: int | None) -> PolicyConfig:
    """``config`` sized to ``cache_bytes`` for an equal-memory comparison; unchanged when no
    target is given or the policy is unbounded (the reference, e.g. ``full``)."""
    if cache_bytes is None or not config.bounded:
        return config
    return size_to_bytes(config, model, cache_bytes)
