"""The compressed tier's data (a weighted point set per KV head) and the compressor protocol.

ADMS compresses in *position-free* space: before a key reaches a compressor its rotary
rotation is undone (``k = R(-p) k_rot``), so keys of different positions can be averaged or
factorised; the cache rotates each compressed key back at its anchor position.

Shapes: ``H`` KV heads, ``n`` points, ``D`` head dim. Every point carries a ``count`` (the tokens it
stands for; 0 marks an empty slot that attention must ignore), the count-weighted ``mean
position`` of its members (for anchors) and an importance ``score`` (summed over members).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class PointSet:
    """Weighted points of one layer, ``(H, n, D)`` keys/values and ``(H, n)`` metadata."""

    keys: torch.Tensor
    values: torch.Tensor
    counts: torch.Tensor  # float32, tokens each point stands for (0 = empty)
    positions: torch.Tensor  # float64, count-weighted mean original position of the members
    scores: torch.Tensor  # float32, importance summed over members

    @property
    def size(self) -> int:
        return int(self.counts.shape[-1])

    def real_counts(self) -> torch.Tensor:
        """``(H,)`` number of non-empty points per head."""
        return (self.counts > 0).sum(dim=-1)

    def cat(self, other: "PointSet") -> "PointSet":
        return PointSet(*(torch.cat([a, b], dim=1) for a, b in zip(self._fields(), other._fields())))

    def gather(self, index: torch.Tensor) -> "PointSet":
        """Points ``index`` ``(H, m)`` of every head."""
        rows = index.unsqueeze(-1).expand(-1, -1, self.keys.shape[-1])
        return PointSet(
            self.keys.gather(1, rows), self.values.gather(1, rows), self.counts.gather(1, index),
            self.positions.gather(1, index), self.scores.gather(1, index),
        )

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.keys, self.values, self.counts, self.positions, self.scores

    @classmethod
    def empty_like(cls, keys: torch.Tensor) -> "PointSet":
        heads, dim = keys.shape[0], keys.shape[-1]
        return cls(
            keys.new_zeros(heads, 0, dim), keys.new_zeros(heads, 0, dim),
            torch.zeros(heads, 0, device=keys.device), torch.zeros(heads, 0, dtype=torch.float64, device=keys.device),
            torch.zeros(heads, 0, device=keys.device),
        )


def weighted_means(points: PointSet, assignment: torch.Tensor, groups: int) -> PointSet:
    """Merge ``points`` into ``groups`` points per head: point ``i`` of head ``h`` joins group
    ``assignment[h, i]``; keys, values and positions become count-weighted means, counts and
    scores sums. Groups nobody joined get count 0."""
    heads, _, dim = points.keys.shape
    weights = points.counts
    counts = weights.new_zeros(heads, groups).scatter_add_(1, assignment, weights)
    scores = points.scores.new_zeros(heads, groups).scatter_add_(1, assignment, points.scores)
    rows = assignment.unsqueeze(-1).expand(-1, -1, dim)
    denominator = counts.clamp(min=1e-12).unsqueeze(-1)
    keys = points.keys.new_zeros(heads, groups, dim, dtype=torch.float32).scatter_add_(
        1, rows, points.keys.float() * weights.unsqueeze(-1)) / denominator
    values = points.values.new_zeros(heads, groups, dim, dtype=torch.float32).scatter_add_(
        1, rows, points.values.float() * weights.unsqueeze(-1)) / denominator
    positions = points.positions.new_zeros(heads, groups).scatter_add_(
        1, assignment, points.positions * weights.double()) / counts.double().clamp(min=1e-12)
    return PointSet(keys.to(points.keys.dtype), values.to(points.values.dtype), counts, positions, scores)


class Compressor(ABC):
    """Fold new points into the compressed tier.

    :meth:`compress` receives the current tier and the newly demoted tokens as one point set
    and returns at most ``capacity[h]`` non-empty points for head ``h`` (padded with empty
    points to a common size).
    """

    #: Whether output points can stand for several tokens (their attention logits then need
    #: ``log(count)``, which takes the attention hook).
    merges_tokens: bool = True

    #: After :meth:`compress`: the output point each input point went into ``(H, n)``, -1 for
    #: points dropped (ADM++'s replay, calibration and controller read it); ``None`` when the
    #: compressor cannot say (custom compressors).
    last_assignment: torch.Tensor | None = None

    @abstractmethod
    def compress(self, points: PointSet, capacity: torch.Tensor) -> PointSet:
        """``points`` ``(H, n)`` -> at most ``capacity`` ``(H,)`` non-empty points per head."""

    def stored_bytes(self, tier: PointSet) -> int:
        """Bytes a deployment stores for ``tier``: full key and value rows plus a count per
        non-empty point. Compressors with a cheaper representation override this."""
        real = int(tier.real_counts().sum())
        row = 2 * tier.keys.shape[-1] * tier.keys.element_size()
        return real * (row + 4)


def pack(points: PointSet, keep: torch.Tensor) -> tuple[PointSet, torch.Tensor]:
    """The points flagged by ``keep`` ``(H, n)`` bool, packed first in each head (in their order)
    and padded with empty points to the largest per-head count; and for every input point its
    index in the packed set ``(H, n)`` (-1 where not kept)."""
    size = int(keep.sum(dim=-1).max()) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[:, :size]
    packed = points.gather(order)
    kept = keep.gather(1, order)
    packed.counts = packed.counts * kept
    slots = torch.arange(size, device=keep.device).expand_as(order)
    index = torch.full(keep.shape, -1, dtype=torch.long, device=keep.device)
    index.scatter_(1, order, torch.where(kept, slots, -1))
    return packed, index


def pad_to_common_size(points: PointSet, keep: torch.Tensor) -> PointSet:
    """The points flagged by ``keep`` ``(H, n)`` bool, packed first in each head (in their
    order) and padded with empty points to the largest per-head count."""
    return pack(points, keep)[0]


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Follow an index map ``(H, n) -> [0, m) or -1`` with another ``(H, m) -> [0, k) or -1``."""
    if second.shape[1] == 0:
        return torch.full_like(first, -1)
    return torch.where(first >= 0, second.gather(1, first.clamp(min=0)), -1)
