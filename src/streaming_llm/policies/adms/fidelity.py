"""Dual fidelity (ADM++): the sketch bank beside the precision bank.

What the mid tier drops (tokens the compressor leaves out, or every demoted token when there is
no compressed share) is not lost but folded into at most ``sketch_budget`` sketches per KV head:
contiguous spans of time of about equal token count, as :class:`~streaming_llm.compressors.SummaryCompressor`
cuts them. ``sketch_reduction`` says what a sketch's row is: ``mean`` and ``sum`` the
count-weighted mean key and value (``sum`` also weighs the sketch like all its members together,
a ``log(count)`` logit bias; ``mean`` like one token), ``first`` the row of its earliest member.

A sketch's energy is its importance per token (summed member scores / count). At every
compression sketches compete with exact tokens for the precision bank by energy; a sketch that
enters it — its energy beats the weakest exact token's score — is *promoted*: it is no longer
merged and stays while its energy ranks it in the bank.
"""

from __future__ import annotations

import torch

from ...compressors import PointSet, SummaryCompressor


def sketch_weights(counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """Attention weight of sketch slots: their count for ``sum``, one token otherwise (0 = empty)."""
    return counts if reduction == "sum" else (counts > 0).float()


def build_sketches(points: PointSet, budget: int, reduction: str) -> PointSet:
    """Fold ``points`` ``(H, n)`` (count 0 = absent) into at most ``budget`` sketches per head."""
    summary = SummaryCompressor()
    capacity = torch.full((points.counts.shape[0],), budget, device=points.counts.device)
    sketches = summary.compress(points, capacity)
    if reduction != "first" or sketches.size == 0:
        return sketches
    # the earliest member of each sketch stands for it: its row and its position
    assignment = summary.last_assignment
    slots = sketches.size
    index = torch.where(assignment >= 0, assignment, slots)
    when = points.positions.masked_fill(assignment < 0, float("inf"))
    first_when = when.new_full((when.shape[0], slots + 1), float("inf")).scatter_reduce(1, index, when, "amin")
    is_first = (when == first_when.gather(1, index)) & (assignment >= 0)
    member = torch.zeros(when.shape[0], slots + 1, dtype=torch.long, device=when.device)
    member.scatter_(1, torch.where(is_first, index, slots), torch.arange(when.shape[1], device=when.device).expand_as(index))
    first = points.gather(member[:, :slots])
    real = sketches.counts > 0
    sketches.keys = torch.where(real[..., None], first.keys, sketches.keys)
    sketches.values = torch.where(real[..., None], first.values, sketches.values)
    sketches.positions = torch.where(real, first.positions, sketches.positions)
    return sketches
