"""The adaptive threshold of seed 003: ``M = 1[r > τ]``, ``τ^l(t) = β^l · quantile({r^l}, q^l(t))``.

One :class:`ThresholdController` per layer. ``q^l(t)`` is chosen so that the active cache meets
its memory target ``target`` slots:

- feedforward, the share of the evictable slots that must go for the cache to be back at the
  target after this step, ``(n - target) / n_candidates`` (0 when the cache is under it);
- plus an integral term ``q_I`` that learns from the occupancy left after eviction,
  ``q_I <- q_I + q_gain · (n_after - target) / target``: with ``β^l != 1`` the feedforward
  quantile keeps too many (``β < 1``) or too few (``β > 1``) slots, and ``q_I`` corrects that.

``β^l < 1`` can keep more than the target however high ``q`` goes: once the kept slots' relevances
bunch up, ``β`` times any quantile lies below nearly all of them. The policy's hard budget
(:class:`~.layer.RelevanceEviction`) then evicts the least relevant; ``β^l >= 1`` is the regime
where the threshold alone meets the target.

``τ = 0`` when ``q <= 0``: relevances are sigmoids, all above 0, so nothing is evicted.
"""

from __future__ import annotations

import torch


class ThresholdController:
    def __init__(self, target: int, beta: float = 1.0, q_gain: float = 0.05):
        self.target = target
        self.beta = beta
        self.q_gain = q_gain
        self.q_integral = 0.0
        self.q = 0.0  # q^l(t) of the last step, for stats

    def quantile_level(self, occupancy: int, candidates: int) -> float:
        """``q^l(t)`` for a cache of ``occupancy`` slots of which ``candidates`` may be evicted."""
        if candidates <= 0:
            return 0.0
        feedforward = max(0, occupancy - self.target) / candidates
        return min(1.0, max(0.0, feedforward + self.q_integral))

    def threshold(self, relevance: torch.Tensor, q: float) -> torch.Tensor:
        """``τ = β · quantile(r, q)`` along the last axis of ``relevance`` ``(..., c)``, shape
        ``(..., 1)`` (0 when ``q <= 0``: every relevance is above it)."""
        if q <= 0 or relevance.shape[-1] == 0:
            return relevance.new_zeros(*relevance.shape[:-1], 1)
        return self.beta * torch.quantile(relevance.float(), q, dim=-1, keepdim=True)

    def keep_mask(self, relevance: torch.Tensor, occupancy: int) -> torch.Tensor:
        """``M = 1[r > τ]`` over the evictable slots' relevances ``(..., n_candidates)`` (one
        threshold per leading row: per KV head)."""
        self.q = self.quantile_level(occupancy, relevance.shape[-1])
        return relevance > self.threshold(relevance, self.q)

    def observe(self, occupancy: int, occupancy_after: int) -> None:
        """Integral update from the slots left after this step's eviction. Only while the
        controller evicts (``occupancy`` before eviction above the target, or ``q_I > 0``): a
        cache still filling up must not wind ``q_I`` down, or the first evictions would come late."""
        if occupancy <= self.target and self.q_integral <= 0:
            return
        error = (occupancy_after - self.target) / self.target
        self.q_integral = min(1.0, max(-1.0, self.q_integral + self.q_gain * error))
