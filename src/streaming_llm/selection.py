"""Coverage-aware ranking: the top-scored slots, with part of the budget spread over time.

ADMS (seed 000) reserves ``coverage_priority`` of a selection budget for coverage: the
candidates' timeline is cut into ``coverage_segments`` equal spans and each span first gets its
``floor(coverage_priority * k / coverage_segments)`` best-scored candidates; the rest of the
budget goes to the best-scored candidates overall. Without coverage this is plain top-k.
"""

from __future__ import annotations

import torch


def coverage_ranking(
    scores: torch.Tensor, positions: torch.Tensor, budget: int, segments: int, priority: float,
) -> torch.Tensor:
    """Candidate indices ``(H, n)`` best first: coverage picks (for a budget of ``budget``), then
    the rest by descending score. Candidates scored ``-inf`` (absent) come last. Ties go to the
    lower index.

    ``scores`` ``(H, n)``, ``positions`` ``(H, n)`` original positions of the candidates.
    """
    n = scores.shape[-1]
    by_score = torch.argsort(scores, dim=-1, descending=True, stable=True)
    quota = int(priority * budget) // segments if segments > 1 else 0
    if quota == 0 or n == 0:
        return by_score
    present = torch.isfinite(scores)
    segment_sorted = timeline_segments(positions, present, segments).gather(1, by_score)
    # walking the candidates best first, a candidate is a coverage pick while fewer than
    # ``quota`` better ones share its span: its rank inside its span is a running count
    one_hot = torch.nn.functional.one_hot(segment_sorted, segments)  # (H, n, segments)
    rank_in_segment = (one_hot.cumsum(dim=1) * one_hot).sum(dim=-1) - 1
    picked = (rank_in_segment < quota) & present.gather(1, by_score)
    # stable sort on "not picked" keeps the descending-score order inside both groups
    first = torch.argsort((~picked).to(torch.int8), dim=-1, stable=True)
    return by_score.gather(1, first)


def timeline_segments(positions: torch.Tensor, present: torch.Tensor, segments: int) -> torch.Tensor:
    """Span index ``(H, n)`` in ``[0, segments)`` of every candidate: each head's present
    candidates' positions, from the first to the last, cut into ``segments`` equal spans."""
    pos = positions.double()
    low = pos.masked_fill(~present, float("inf")).amin(dim=-1, keepdim=True)
    high = pos.masked_fill(~present, float("-inf")).amax(dim=-1, keepdim=True)
    span = (high - low + 1).clamp(min=1)
    return ((pos - low) * segments / span).floor().nan_to_num(0.0).clamp(0, segments - 1).long()
