"""``snapkv``: observation-window voting with pooling.

Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024,
arXiv:2404.14469. The last ``window_size`` queries (the observation window) vote: each earlier
slot's score is the attention those queries give it, summed over the window, smoothed by a 1-D
pooling of ``kernel_size`` along the sequence (avg by default, as the reference code), ranked
per KV head (the query heads of a GQA group averaged, as kvpress does). The top slots and the
window's own tokens are kept.

The paper compresses the prompt once, at prefill. For unbounded streams this policy also
re-selects: whenever the layer would exceed ``cache_size`` slots it keeps
``cache_size - reselect_interval`` of them (the window plus the best-scored rest), so the next
``reselect_interval`` tokens are appended without another selection. The attention rows of the
last ``window_size`` queries are kept (aligned with the slots) for that vote, and counted in
``cache_bytes``.

Shapes: probabilities ``(B, H_q, q, n)`` -> window rows ``(H_kv, w, n)`` -> scores ``(H_kv, n)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from .base import LayerPolicy, PolicyConfig, SlotView, check_int
from .scored import per_kv_head, top_k_with_recent


def pool_scores(scores: torch.Tensor, kernel_size: int, pooling: str) -> torch.Tensor:
    """1-D pooling along the slots of ``scores`` ``(H, n)`` (stride 1, same length)."""
    if kernel_size <= 1 or scores.shape[-1] == 0:
        return scores
    pool = F.avg_pool1d if pooling == "avgpool" else F.max_pool1d
    pooled = pool(scores[:, None, :], kernel_size, stride=1, padding=kernel_size // 2)[:, 0, :]
    return pooled[..., : scores.shape[-1]]  # an even kernel yields one extra column


class ObservationWindow(LayerPolicy):
    """Keeps the last ``window_size`` attention rows and re-selects slots when the layer fills."""

    needs_attention = True
    needs_position_shift = True

    def __init__(self, cache_size: int, window_size: int, kernel_size: int, pooling: str, reselect_interval: int):
        self.cache_size = cache_size
        self.window_size = window_size
        self.kernel_size = kernel_size
        self.pooling = pooling
        self.reselect_interval = reselect_interval
        self.rows: torch.Tensor | None = None  # (H_kv, <=w, T) attention of the latest queries

    def max_slots(self) -> int | None:
        return self.cache_size

    def state_bytes(self) -> int:
        return 0 if self.rows is None else self.rows.numel() * self.rows.element_size()

    def _record(self, probs: torch.Tensor, num_kv_heads: int) -> None:
        new_rows = per_kv_head(probs, num_kv_heads)  # (H, q, n)
        if self.rows is not None:
            old = F.pad(self.rows, (0, new_rows.shape[-1] - self.rows.shape[-1]))  # older queries never saw new slots
            new_rows = torch.cat([old, new_rows], dim=1)
        self.rows = new_rows[:, -self.window_size :, :]

    def window_scores(self) -> torch.Tensor:
        """Pooled votes ``(H, n)`` of the observation window; the window's own slots score 0
        (they are always kept)."""
        n = self.rows.shape[-1]
        older = max(n - self.window_size, 0)
        votes = pool_scores(self.rows[..., :older].sum(dim=1), self.kernel_size, self.pooling)
        return F.pad(votes, (0, n - older))

    def select_top(self, scores: torch.Tensor, keep: int) -> torch.Tensor:
        """Keep ``keep`` slots per head: the window plus the best-scored; also aligns the rows."""
        indices = top_k_with_recent(scores, keep, self.window_size)
        self.rows = self.rows.gather(-1, indices[:, None, :].expand(-1, self.rows.shape[1], -1))
        return indices.cpu()

    def observe(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        self._record(probs, view.positions.shape[0])
        if view.num_slots <= self.cache_size:
            return None
        return self.select_top(self.window_scores(), self.cache_size - self.reselect_interval)


@dataclass
class WindowVoteConfig(PolicyConfig):
    """Observation-window parameters shared by ``snapkv``, ``dynamickv`` and ``rocketkv``.

    Parameters
    ----------
    window_size:
        Observation window: the latest queries that vote, and the newest tokens always kept (>= 1).
    kernel_size:
        Pooling kernel along the sequence (>= 1; 1 = no pooling).
    pooling:
        ``avgpool`` or ``maxpool``.
    reselect_interval:
        Tokens appended between two selections once the cache is full (>= 1).
    """

    window_size: int = 32
    kernel_size: int = 5
    pooling: Literal["avgpool", "maxpool"] = "avgpool"
    reselect_interval: int = 32

    def validate_window(self, budget_name: str) -> None:
        """Check the window parameters and that the ``budget_name`` field leaves room for them."""
        check_int("window_size", self.window_size, 1)
        check_int("kernel_size", self.kernel_size, 1)
        check_int("reselect_interval", self.reselect_interval, 1)
        check_int(budget_name, getattr(self, budget_name), self.window_size + self.reselect_interval)

    def state_bytes_per_slot(self, num_kv_heads: int) -> int:
        return 4 * self.window_size * num_kv_heads  # float32 attention rows of the window's queries

    def window_args(self, cache_size: int) -> dict:
        return dict(cache_size=cache_size, window_size=self.window_size, kernel_size=self.kernel_size,
                    pooling=self.pooling, reselect_interval=self.reselect_interval)


@dataclass
class SnapKVConfig(WindowVoteConfig):
    """Parameters
    ----------
    cache_size:
        Slots kept per layer (>= window_size + reselect_interval).
    window_size, kernel_size, pooling, reselect_interval:
        See :class:`WindowVoteConfig` (reference code defaults: avg pooling, kernel 5).
    """

    cache_size: int = 2048

    name: ClassVar[str] = "snapkv"
    size_fields: ClassVar[tuple[str, ...]] = ("cache_size", "window_size")
    label_fields: ClassVar[dict[str, str]] = {"window_size": "window", "cache_size": "cache"}

    def validate(self) -> None:
        self.validate_window("cache_size")

    def sized(self, slots: int) -> "SnapKVConfig":
        return replace(self, cache_size=slots)

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> LayerPolicy:
        return ObservationWindow(**self.window_args(self.cache_size))
