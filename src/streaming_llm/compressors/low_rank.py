"""``low_rank``: the compressed tokens' keys and values as rank-``r`` factors.

For one KV head, the ``m`` compressed tokens' position-free keys form ``K`` ``(m, D)``. With the
SVD of ``K`` (rows subsampled to at most ``svd_max_tokens`` when ``m`` is larger, an even stride
over the timeline) giving right singular vectors ``W = V_r`` ``(D, r)``, the tier stores the
coefficients ``A = K W`` ``(m, r)`` and the basis ``W``; attention uses ``K_hat = A W^T``, the best
rank-``r`` approximation of ``K`` in Frobenius norm when no subsampling happened (Eckart-Young).
Values are factorised the same way with their own basis.

Bytes per head: ``2 (m r + r D)`` elements instead of ``2 m D``: a compressed token costs
``r / D`` of an exact one plus its share of the bases (rank 16, D 64: a quarter).

Which tokens the tier holds when more arrive than ``capacity`` allows: the best-scored, with a
``coverage_priority`` share spread over ``coverage_segments`` spans of the timeline (see
:mod:`streaming_llm.selection`). Each token stays a token (count 1): no logit bias needed.
Re-factorising at every compression re-projects earlier reconstructions: errors compound
(seed 004, "compression error accumulation"), which ``compression_interval`` trades off.
"""

from __future__ import annotations

import torch

from ..selection import coverage_ranking
from .base import Compressor, PointSet, pack


def low_rank_approximation(x: torch.Tensor, rank: int, max_rows: int) -> tuple[torch.Tensor, int]:
    """Rank-``rank`` reconstruction of ``x`` ``(H, m, D)`` (per head) and the rank used.

    The basis comes from at most ``max_rows`` evenly strided rows; all rows are projected on it.
    """
    rows = x.shape[1]
    if rows == 0:
        return x, 0
    data = x.float()
    fit = data
    if rows > max_rows:
        fit = data[:, torch.linspace(0, rows - 1, max_rows, device=x.device).round().long()]
    _, _, vh = torch.linalg.svd(fit, full_matrices=False)
    basis = vh[:, :rank]  # (H, r, D)
    reconstruction = (data @ basis.transpose(1, 2)) @ basis
    return reconstruction.to(x.dtype), int(basis.shape[1])


class LowRankCompressor(Compressor):
    merges_tokens = False

    def __init__(self, rank: int, svd_max_tokens: int, coverage_segments: int = 1, coverage_priority: float = 0.0):
        self.rank = rank
        self.svd_max_tokens = svd_max_tokens
        self.coverage_segments = coverage_segments
        self.coverage_priority = coverage_priority
        self.rank_used = 0

    def compress(self, points: PointSet, capacity: torch.Tensor) -> PointSet:
        present = points.counts > 0
        width = min(int(capacity.max()), points.size)
        ranking = coverage_ranking(
            points.scores.masked_fill(~present, float("-inf")), points.positions, width,
            self.coverage_segments, self.coverage_priority,
        )[:, :width]
        chosen = points.gather(ranking)
        keep = (chosen.counts > 0) & (torch.arange(width, device=capacity.device) < capacity[:, None])
        tier, slot_of_chosen = pack(chosen, keep)
        self.last_assignment = torch.full(present.shape, -1, dtype=torch.long, device=present.device)
        self.last_assignment.scatter_(1, ranking, slot_of_chosen)
        # empty rows are zero so they do not tilt the bases
        live = (tier.counts > 0).unsqueeze(-1)
        tier.keys, self.rank_used = low_rank_approximation(tier.keys * live, self.rank, self.svd_max_tokens)
        tier.values, _ = low_rank_approximation(tier.values * live, self.rank, self.svd_max_tokens)
        return tier

    def stored_bytes(self, tier: PointSet) -> int:
        real = int(tier.real_counts().sum())
        heads, dim, element = tier.keys.shape[0], tier.keys.shape[-1], tier.keys.element_size()
        coefficients = 2 * real * self.rank_used * element
        bases = 2 * heads * self.rank_used * dim * element if real else 0
        return coefficients + bases
