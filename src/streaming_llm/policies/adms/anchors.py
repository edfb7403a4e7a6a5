"""Anchor positions of compressed slots, and their calibration against recent queries (ADM++).

Anchors (seed 000, ``anchor_mode``): ``mean`` — the count-weighted mean original position of a
slot's members; ``grid`` — evenly spaced over the evicted span ``[low, high)``, in the order of the
slots' mean positions (slot ``i`` of ``c`` at ``low + (i + 1/2)(high - low)/c``); ``hybrid`` — the
midpoint of the two. Keys are rotated at their anchor, so under RoPE the anchor sets the slot's
logit against every query; with ``enable_pos_shift`` the cache presents slots at contiguous
positions and the anchor then sets the slot's order.

Calibration (seed 001, "RoPE alignment calibration"): for a slot with position-free key ``k``
and logit bias ``b`` standing for members ``i`` (rows ``r_i`` as the cache held them, biases
``b_i``), and the last ``W`` queries ``q_t`` (rotated at their own positions), the target logit is
``y_t = log sum_i exp(b_i + s q_t . r_i)`` and the slot's is ``f_t(a) = b + s q_t . R(a) k``. The
anchor minimises the regularised least-squares cost
``sum_t (f_t(a) - y_t)^2 / sum_t (f_t(a_0) - y_t)^2 + lambda ((a - a_0) / reach)^2`` (``a_0`` the
uncalibrated anchor, ``lambda = calibration_regularization``, ``reach`` = 128 positions). Under
RoPE the cost oscillates in ``a`` (every frequency is a cosine), so a gradient step stalls in the
nearest ripple; the fit searches offsets ``+-1, 2, 4, ..., reach`` and then refines the winner by
``+-1..3``. Anchors stay inside the evicted span.
"""

from __future__ import annotations

import torch

from ...compressors import PointSet


def anchor_positions(tier: PointSet, mode: str, low: float, high: float) -> torch.Tensor:
    """Anchor position ``(H, c)`` int64 of every compressed slot (see the module docstring).

    ``low``/``high``: the evicted span, from the first position after the sinks to the first
    recent position. Empty slots get ``low`` (they are masked out anyway).
    """
    real = tier.counts > 0
    mean = tier.positions
    order = torch.argsort(mean.masked_fill(~real, float("inf")), dim=-1, stable=True)
    rank = torch.argsort(order, dim=-1).double()
    count = real.sum(dim=-1, keepdim=True).clamp(min=1).double()
    grid = low + (rank + 0.5) * (high - low) / count
    anchors = {"mean": mean, "grid": grid, "hybrid": (mean + grid) / 2}[mode]
    return torch.where(real, anchors, torch.full_like(anchors, low)).round().long()


def member_logits(queries: torch.Tensor, rows: torch.Tensor, biases: torch.Tensor, assignment: torch.Tensor,
                  slots: int, scale: float) -> torch.Tensor:
    """Target logits ``(H, W, slots)``: per query, the log-sum-exp of the logits of the members
    each slot stands for. ``rows`` ``(H, n, D)`` rotated as the cache held them, ``biases`` ``(H, n)``,
    ``assignment`` ``(H, n)`` slot of each member (-1: none)."""
    logits = scale * torch.einsum("hwd,hnd->hwn", queries.float(), rows.float()) + biases[:, None, :]
    index = torch.where(assignment >= 0, assignment, slots)[:, None, :].expand_as(logits)  # slot `slots` = none
    heads, window = logits.shape[:2]
    peak = logits.new_full((heads, window, slots + 1), float("-inf")).scatter_reduce(2, index, logits, "amax")
    shifted = (logits - peak.gather(2, index)).exp()
    total = logits.new_zeros(heads, window, slots + 1).scatter_add_(2, index, shifted)
    return (peak + total.log())[..., :slots]


def slot_logits(queries: torch.Tensor, keys: torch.Tensor, biases: torch.Tensor, anchors: torch.Tensor,
                rotary, scale: float) -> torch.Tensor:
    """``(H, W, m)`` logits of position-free ``keys`` ``(H, m, D)`` rotated at ``anchors`` ``(H, m)``."""
    rotated = rotary.shift_keys(keys[None].float(), anchors.cpu())[0]
    return scale * torch.einsum("hwd,hmd->hwm", queries.float(), rotated) + biases[:, None, :]


def calibration_error(queries, keys, biases, anchors, targets, rotary, scale) -> torch.Tensor:
    """Mean squared logit error ``(H, m)`` of slots at ``anchors`` against ``targets`` ``(H, W, m)``."""
    return (slot_logits(queries, keys, biases, anchors, rotary, scale) - targets).pow(2).mean(dim=1)


def calibrate_anchors(queries: torch.Tensor, keys: torch.Tensor, biases: torch.Tensor, anchors: torch.Tensor,
                      targets: torch.Tensor, rotary, scale: float, regularization: float, low: int, high: int,
                      reach: int = 128) -> torch.Tensor:
    """Anchors ``(H, m)`` int64 refitted so the slots' logits match ``targets`` ``(H, W, m)`` over
    ``queries`` ``(H, W, D)`` (see the module docstring); they stay in ``[low, high)``."""
    if queries.shape[1] == 0 or anchors.numel() == 0:
        return anchors.clone()
    finite = torch.isfinite(targets)
    targets = targets.masked_fill(~finite, 0.0)
    upper = max(low, high - 1)

    def objective(at: torch.Tensor) -> torch.Tensor:
        return ((slot_logits(queries, keys, biases, at, rotary, scale) - targets) * finite).pow(2).sum(dim=1)

    start = objective(anchors).clamp(min=1e-12)
    best, best_cost = anchors.clone(), torch.ones_like(start)

    def consider(offsets, around):
        nonlocal best, best_cost
        for offset in offsets:
            at = (around + offset).clamp(low, upper)
            cost = objective(at) / start + regularization * ((at - anchors).double() / reach).pow(2).to(start.dtype)
            better = cost < best_cost
            best, best_cost = torch.where(better, at, best), torch.where(better, cost, best_cost)

    coarse = [sign * 2 ** k for k in range(reach.bit_length()) for sign in (1, -1) if 2 ** k <= reach]
    consider(coarse, anchors)
    consider([1, -1, 2, -2, 3, -3], best.clone())
    return best
