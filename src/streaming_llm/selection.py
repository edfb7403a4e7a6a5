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
    the rest by descending score. Candidates scored ``-inf`` (absent) come last.

    ``scores`` ``(H, n)``, ``positions`` ``(H, n)`` original positions of the candidates.
    """
    n = scores.shape[-1]
    by_score = torch.argsort(scores, dim=-1, descending=True, stable=True)
    quota = int(priority * budget) // segments if segments > 1 else 0
    if quota == 0 or n == 0:
        return by_score
    present = torch.isfinite(scores)
    pos = positions.double().masked_fill(~present, float("nan"))
    low = torch.nan_to_num(pos, nan=float("inf")).amin(dim=-1, keepdim=True)
    high = torch.nan_to_num(pos, nan=float("-inf")).amax(dim=-1, keepdim=True)
    span = (high - low + 1).clamp(min=1)
    segment = ((positions.double() - low) * segments / span).floor().clamp(0, segments - 1).long()
    picked = torch.zeros_like(present)
    for g in range(segments):
        masked = scores.masked_fill((segment != g) | ~present, float("-inf"))
        top = masked.topk(min(quota, n), dim=-1)
        picked |= torch.zeros_like(present).scatter(1, top.indices, torch.isfinite(top.values))
    # stable sort on "not picked" keeps the descending-score order inside both groups
    first = torch.argsort((~picked.gather(1, by_score)).to(torch.int8), dim=-1, stable=True)
    return by_score.gather(1, first)
