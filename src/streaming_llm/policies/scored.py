"""Scored eviction: policies that rank slots by attention and keep the best ones.

A subclass only says how this step's attention probabilities update a per-slot score
(:meth:`ScoredEviction.update_scores`); the base keeps the scores aligned with the stored slots,
protects the most recent ``protected_recent`` slots, and does the top-k once.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from .base import LayerPolicy, SlotView


def per_kv_head(probs: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """``(B, H_q, q, n)`` -> ``(H_kv, q, n)``: mean over the query heads sharing a KV head (GQA)
    and over the batch (which is 1)."""
    batch, heads, q, n = probs.shape
    return probs.reshape(batch, num_kv_heads, heads // num_kv_heads, q, n).mean(dim=(0, 2))


def top_k_with_recent(scores: torch.Tensor, keep: int, protected_recent: int) -> torch.Tensor:
    """Ascending indices ``(H, keep)``: the last ``protected_recent`` slots plus the
    ``keep - protected_recent`` best-scored slots before them, per row of ``scores`` ``(H, n)``."""
    n = scores.shape[-1]
    recent = min(protected_recent, keep)
    candidates = n - recent
    chosen = scores[:, :candidates].topk(keep - recent, dim=-1).indices
    tail = torch.arange(candidates, n, device=scores.device).expand(scores.shape[0], recent)
    return torch.cat([chosen, tail], dim=-1).sort(dim=-1).values


class ScoredEviction(LayerPolicy):
    """Keep at most ``budget`` slots: ``protected_recent`` newest plus the top-scored rest.

    ``per_head=False`` ranks slots once per layer (scores averaged over KV heads), so every
    head keeps the same tokens.
    """

    needs_attention = True
    needs_position_shift = True

    def __init__(self, budget: int, protected_recent: int, per_head: bool = True):
        self.budget = budget
        self.protected_recent = protected_recent
        self.per_head = per_head
        self.scores: torch.Tensor | None = None  # (H_kv or 1, T), aligned with the stored slots

    def max_slots(self) -> int | None:
        return self.budget

    def state_bytes(self) -> int:
        return 0 if self.scores is None else self.scores.numel() * self.scores.element_size()

    @abstractmethod
    def update_scores(self, previous: torch.Tensor, probs: torch.Tensor, view: SlotView) -> torch.Tensor:
        """New ``(H, n)`` scores from the ``(H, n - q)`` ``previous`` ones (zero-padded for the
        ``q`` new slots by the caller) and this step's ``probs`` ``(H_kv, q, n)``."""

    def observe(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        num_kv_heads = view.positions.shape[0]
        grouped = per_kv_head(probs, num_kv_heads)
        if not self.per_head:
            grouped = grouped.mean(dim=0, keepdim=True)
        previous = self.padded_scores(grouped.shape[0], view.num_slots, probs.device)
        return self.evict(self.update_scores(previous, grouped, view), view)

    def padded_scores(self, rows: int, n: int, device: torch.device) -> torch.Tensor:
        """The stored scores ``(rows, n)``, zero for slots appended since the last step."""
        previous = torch.zeros(rows, n, device=device)
        if self.scores is not None:
            previous[:, : self.scores.shape[-1]] = self.scores
        return previous

    def over_budget(self, view: SlotView) -> bool:
        """Whether this step evicts (subclasses may evict in batches)."""
        return view.num_slots > self.budget

    def choose(self, scores: torch.Tensor, view: SlotView) -> torch.Tensor:
        """Ascending slot indices ``(H, keep)`` to keep, given this step's ``scores`` ``(H, n)``."""
        return top_k_with_recent(scores, self.budget, self.protected_recent)

    def evict(self, scores: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        """Keep the slots :meth:`choose` picks (when :meth:`over_budget`), scores aligned with them."""
        if not self.over_budget(view):
            self.scores = scores
            return None
        keep = self.choose(scores, view)
        self.scores = scores.gather(-1, keep)
        keep = keep.cpu()
        return keep if self.per_head else keep[0]
