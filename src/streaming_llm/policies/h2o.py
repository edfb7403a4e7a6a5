"""``h2o``: Heavy-Hitter Oracle — accumulated attention plus a recent window.

Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
Models", NeurIPS 2023, arXiv:2306.14048. Every slot accumulates the attention probability it
receives from every query (prefill queries included). The cache keeps the ``recent_size`` newest
tokens and the ``heavy_size`` tokens with the largest accumulated score, per KV head (scores of
the query heads sharing a KV head are averaged, as kvpress does for GQA); at each step the
lowest-scored token outside the window is evicted.

Shapes: probabilities ``(B, H_q, q, n)`` -> scores ``(H_kv, n)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .base import LayerPolicy, PolicyConfig, SlotView, check_int
from .scored import ScoredEviction


class HeavyHitters(ScoredEviction):
    def update_scores(self, previous: torch.Tensor, probs: torch.Tensor, view: SlotView) -> torch.Tensor:
        return previous + probs.sum(dim=1)  # sum over this step's queries


@dataclass
class H2OConfig(PolicyConfig):
    """Parameters
    ----------
    heavy_size:
        Heavy-hitter slots kept per KV head (>= 0).
    recent_size:
        Most recent tokens always kept (>= 1).
    """

    heavy_size: int = 1000
    recent_size: int = 1000

    name: ClassVar[str] = "h2o"
    size_fields: ClassVar[tuple[str, ...]] = ("heavy_size", "recent_size")
    label_fields: ClassVar[dict[str, str]] = {"recent_size": "recent", "heavy_size": "heavy"}

    def validate(self) -> None:
        check_int("heavy_size", self.heavy_size, 0)
        check_int("recent_size", self.recent_size, 1)

    def sized(self, slots: int) -> "H2OConfig":
        recent = max(1, slots // 2)
        return replace(self, heavy_size=slots - recent, recent_size=recent)

    def state_bytes_per_slot(self, num_kv_heads: int) -> int:
        return 4 * num_kv_heads  # float32 accumulated score per slot and KV head

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return HeavyHitters(self.heavy_size + self.recent_size, protected_recent=self.recent_size)
