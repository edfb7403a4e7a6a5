"""Equal-memory comparisons: size any bounded policy to a given number of cache bytes.

A slot of one layer costs its keys and values (``2 * H_kv * D`` elements in the model's
dtype), its int64 position per KV head, and whatever per-slot state its policy keeps (H2O's
scores, SnapKV's observation-window rows). A policy sized to ``cache_bytes`` gets
``floor(cache_bytes / (num_layers * bytes_per_slot))`` slots per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .policies import PolicyConfig
from .policies.base import POSITION_BYTES

@dataclass(frozen=True)
class KVGeometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    element_bytes: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> "KVGeometry":
        config = model.config.get_text_config(decoder=True)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        dtype = next(model.parameters()).dtype
        return cls(config.num_hidden_layers, kv_heads, head_dim, torch.empty((), dtype=dtype).element_size())

    def bytes_per_slot(self, config: PolicyConfig) -> int:
        """Bytes one slot of one layer costs under ``config``."""
        kv = 2 * self.num_kv_heads * self.head_dim * self.element_bytes
        return kv + self.num_kv_heads * POSITION_BYTES + config.state_bytes_per_slot(self.num_kv_heads)


def size_to_bytes(config: PolicyConfig, model: torch.nn.Module, cache_bytes: int) -> PolicyConfig:
    """``config`` resized so the whole cache holds at most ``cache_bytes`` bytes."""
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 1:
        raise ValueError(f"cache_bytes must be an integer >= 1; got {cache_bytes!r}")
    geometry = KVGeometry.of(model)
    return config.sized_to_bytes(geometry, cache_bytes // geometry.num_layers)


def cache_bytes_of(config: PolicyConfig, model: torch.nn.Module) -> int:
    """Most bytes a cache following ``config`` holds on ``model``: the memory that an
    equal-memory comparison gives every other policy. Unbounded policies raise ``ValueError``."""
    geometry = KVGeometry.of(model)
    return config.max_cache_bytes(geometry)
