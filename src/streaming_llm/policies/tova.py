"""``tova``: Token Omission Via Attention.

Oren et al. 2024, "Transformers are Multi-State RNNs", EMNLP 2024, arXiv:2401.06104. When the
cache is over ``cache_size``, drop the tokens with the lowest attention from the *current* query
(the last query of the step), averaged over all heads of the layer, so every head keeps the same
tokens. Scores are not accumulated: each step ranks afresh.

Shapes: probabilities ``(B, H_q, q, n)`` -> last-query scores ``(1, n)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .base import LayerPolicy, PolicyConfig, SlotView, check_int
from .scored import ScoredEviction


class LastQueryAttention(ScoredEviction):
    def update_scores(self, previous: torch.Tensor, probs: torch.Tensor, view: SlotView) -> torch.Tensor:
        return probs[:, -1, :]


@dataclass
class TOVAConfig(PolicyConfig):
    """Parameters
    ----------
    cache_size:
        Slots kept per layer (>= 1).
    """

    cache_size: int = 2000

    name: ClassVar[str] = "tova"
    size_fields: ClassVar[tuple[str, ...]] = ("cache_size",)
    label_fields: ClassVar[dict[str, str]] = {"cache_size": "cache"}

    def validate(self) -> None:
        check_int("cache_size", self.cache_size, 1)

    def sized(self, slots: int) -> "TOVAConfig":
        return replace(self, cache_size=slots)

    def state_bytes_per_slot(self, num_kv_heads: int) -> int:
        return 4  # float32 score per slot, shared by the heads

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return LastQueryAttention(self.cache_size, protected_recent=0, per_head=False)
