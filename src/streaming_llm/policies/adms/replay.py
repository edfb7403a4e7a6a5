"""Residual replay (ADM++) and the energy a compression captures.

For one KV head, the points that went into compressed slots (``assignment >= 0``, count ``c_i``)
and the slots' rows give the *variance captured*, separately for keys and values and averaged:
``1 - sum_i c_i |x_i - x_hat(i)|^2 / sum_i c_i |x_i - mean|^2`` (1 when nothing was compressed).
Each point's residual is its share of the unexplained variance, keys and values each normalised
by their total.

When a head's compression captures less than ``energy_replay_threshold``, its exact tokens with
the largest residuals (up to ``replay_budget``) are replayed: kept as exact rows and taken back
out of their compressed slot (a merged slot's mean, count, score and position are corrected by
subtracting the member).
"""

from __future__ import annotations

import torch

from ...compressors import PointSet


def variance_captured(points: PointSet, tier: PointSet, assignment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(energy (H,), residual (H, n), active (H,))``: active heads compressed something."""
    assigned = assignment >= 0
    weights = points.counts * assigned
    active = weights.sum(dim=1) > 0
    energy = torch.ones(weights.shape[0], device=weights.device)
    residual = torch.zeros_like(weights)
    if tier.size == 0:
        return energy, residual, active & False
    index = assignment.clamp(min=0).unsqueeze(-1).expand(-1, -1, points.keys.shape[-1])
    shares = []
    for original, slots in ((points.keys, tier.keys), (points.values, tier.values)):
        data = original.float()
        approx = slots.float().gather(1, index)
        total_weight = weights.sum(dim=1).clamp(min=1e-12)
        mean = (data * weights[..., None]).sum(dim=1) / total_weight[:, None]
        total = ((data - mean[:, None]).pow(2).sum(-1) * weights).sum(dim=1).clamp(min=1e-12)
        error = (data - approx).pow(2).sum(-1) * assigned
        shares.append(1 - (error * points.counts).sum(dim=1) / total)
        residual = residual + error / total[:, None]
    energy = torch.where(active, ((shares[0] + shares[1]) / 2).clamp(0, 1), energy)
    return energy, residual, active


def pick_replays(residual: torch.Tensor, candidates: torch.Tensor, triggered: torch.Tensor, budget: int) -> torch.Tensor:
    """``(H, n)`` bool: the ``budget`` largest-residual ``candidates`` of each ``triggered`` head."""
    if budget == 0:
        return torch.zeros_like(candidates)
    ranked = residual.masked_fill(~candidates, float("-inf"))
    top = ranked.topk(min(budget, ranked.shape[1]), dim=1)
    picked = torch.zeros_like(candidates).scatter_(1, top.indices, torch.isfinite(top.values))
    return picked & candidates & triggered[:, None]


def take_out(tier: PointSet, points: PointSet, assignment: torch.Tensor, removed: torch.Tensor, merges: bool) -> PointSet:
    """``tier`` without the ``removed`` points ``(H, n)``: a slot of one token empties; a merged
    slot becomes the mean of its other members."""
    slots = tier.size
    index = torch.where(removed & (assignment >= 0), assignment, slots)
    heads, _, dim = tier.keys.shape

    def subtract(per_point: torch.Tensor) -> torch.Tensor:
        shape = (heads, slots + 1) + tuple(per_point.shape[2:])
        target = index if per_point.dim() == 2 else index[..., None].expand_as(per_point)
        return per_point.new_zeros(shape).scatter_add_(1, target, per_point)[:, :slots]

    weight = points.counts * removed
    removed_count = subtract(weight)
    left = (tier.counts - removed_count).clamp(min=0)
    if not merges:
        left = torch.where(removed_count > 0, torch.zeros_like(left), left)
    keep = left > 1e-6
    out = PointSet(tier.keys, tier.values, left * keep, tier.positions, tier.scores - subtract(points.scores * removed))
    if merges:
        denominator = left.clamp(min=1e-12)[..., None]
        out.keys = torch.where(keep[..., None], (tier.keys.float() * tier.counts[..., None]
                               - subtract(points.keys.float() * weight[..., None])) / denominator, tier.keys.float()).to(tier.keys.dtype)
        out.values = torch.where(keep[..., None], (tier.values.float() * tier.counts[..., None]
                                 - subtract(points.values.float() * weight[..., None])) / denominator, tier.values.float()).to(tier.values.dtype)
        out.positions = torch.where(keep, (tier.positions * tier.counts.double()
                                    - subtract(points.positions * weight.double())) / left.double().clamp(min=1e-12), tier.positions)
    return out
