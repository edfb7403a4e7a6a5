"""ATSKV's per-layer rule: score the evictable slots with the relevance predictor and keep
``M = 1[r > τ]`` (:mod:`.controller`), never more than ``cache_size`` slots.

Per slot the layer keeps what the features need across steps (:mod:`.features`): accumulated and
recent attention, the projected hidden state and the token-type flags; last-query attention,
norms, age and position are read afresh each step. The ``start_size`` first tokens (attention
sinks) and the ``recent_size`` newest slots are never evicted; the others are the candidates.
Every head keeps the same tokens (relevance is per layer, as the predictor is).

Shapes: probabilities ``(B, H_q, q, n)`` -> per-slot statistics ``(n,)``.
"""

from __future__ import annotations

import torch

from ..base import LayerPolicy, SlotView
from .controller import ThresholdController
from .features import HIDDEN_DIMS, TOKEN_FLAGS, feature_matrix, head_norms, recent_update
from .predictor import RelevancePredictor


class RelevanceEviction(LayerPolicy):
    needs_attention = True
    needs_position_shift = True

    def __init__(self, cache_size: int, start_size: int, recent_size: int, beta: float, q_gain: float):
        self.cache_size = cache_size
        self.start_size = start_size
        self.recent_size = recent_size
        self.controller = ThresholdController(cache_size, beta, q_gain)
        self.predictor: RelevancePredictor | None = None  # bound by ATSKVCache.attach
        self.tap = None
        self.layer_index = 0
        self.accumulated = torch.zeros(0)  # (n,) aligned with the stored slots
        self.recent = torch.zeros(0)
        self.hidden = torch.zeros(0, HIDDEN_DIMS)
        self.flags = torch.zeros(0, len(TOKEN_FLAGS), dtype=torch.uint8)
        #: called with (layer, step, positions, features) of the scored slots (train-relevance's bounded runs)
        self.recorder = None
        self.evicted_by_threshold = 0
        self.evicted_by_budget = 0

    def bind(self, tap, layer_index: int, predictor: RelevancePredictor) -> None:
        self.tap, self.layer_index, self.predictor = tap, layer_index, predictor

    def max_slots(self) -> int | None:
        return self.cache_size

    def state_bytes(self) -> int:
        floats = self.accumulated.numel() + self.recent.numel() + self.hidden.numel()
        return 4 * floats + self.flags.numel()

    def stats(self) -> dict[str, float]:
        return {"atskv_evicted_by_threshold": self.evicted_by_threshold,
                "atskv_evicted_by_budget": self.evicted_by_budget, "atskv_q": self.controller.q}

    # -- state -----------------------------------------------------------------------------
    def _new_hidden(self, q: int, device: torch.device) -> torch.Tensor:
        hidden = None if self.tap is None else self.tap.take_hidden(self.layer_index, q)
        projection = None if self.predictor is None else self.predictor.projection
        if hidden is None or projection is None:
            return torch.zeros(q, HIDDEN_DIMS, device=device)
        return hidden.float() @ projection.to(hidden.device)

    def _new_flags(self, q: int) -> torch.Tensor:
        ids = None if self.tap is None else self.tap.new_token_ids(q)
        table = None if self.predictor is None else self.predictor.flags
        if ids is None or table is None:
            return torch.zeros(q, len(TOKEN_FLAGS), dtype=torch.uint8)
        return table[ids.clamp(0, table.shape[0] - 1)]

    def _grow(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor:
        """Fold this step's ``probs`` ``(q, n)`` into the per-slot state; returns last-query attention."""
        n, q = view.num_slots, view.new_tokens
        pad = n - self.accumulated.shape[0]
        device = probs.device
        self.accumulated = torch.cat([self.accumulated.to(device), probs.new_zeros(pad)]) + probs.sum(dim=0)
        self.recent = recent_update(torch.cat([self.recent.to(device), probs.new_zeros(pad)]), probs)
        self.hidden = torch.cat([self.hidden.to(device), self._new_hidden(q, device)[-pad:] if pad else
                                 self.hidden.new_zeros(0, HIDDEN_DIMS)])
        self.flags = torch.cat([self.flags, self._new_flags(q)[-pad:] if pad else self.flags[:0]])
        return probs[-1]

    # -- selection -------------------------------------------------------------------------
    def candidates(self, view: SlotView) -> torch.Tensor:
        """Indices of the evictable slots: neither a sink nor in the recent window."""
        n = view.num_slots
        index = torch.arange(n)
        return index[(view.positions[0] >= self.start_size) & (index < n - self.recent_size)]

    def relevance(self, index: torch.Tensor, last: torch.Tensor, view: SlotView) -> torch.Tensor:
        """``r`` ``(len(index),)`` of the slots ``index``."""
        device = last.device
        at = index.to(device)
        age = view.seen_tokens - 1 - view.positions[0, index]
        features = feature_matrix(
            self.hidden[at], self.accumulated[at], self.recent[at], last[at], age.to(device), at, view.num_slots,
            head_norms(view.keys[..., at, :]), head_norms(view.values[..., at, :]), self.flags[index].to(device))
        if self.recorder is not None:
            self.recorder(self.layer_index, view.seen_tokens - 1, view.positions[0, index], features)
        predictor = self.predictor or RelevancePredictor.prior(self.layer_index + 1)
        return predictor.relevance(self.layer_index, features)

    def observe(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        last = self._grow(probs.float().mean(dim=(0, 1)), view)
        n = view.num_slots
        if n <= self.cache_size and self.controller.q_integral <= 0:
            return None  # under the target and nothing learnt to evict early: keep everything
        index = self.candidates(view)
        relevance = self.relevance(index, last, view)
        keep = self.controller.keep_mask(relevance, n)
        self.evicted_by_threshold += int((~keep).sum())
        excess = n - index.numel() + int(keep.sum()) - self.cache_size
        if excess > 0:  # the threshold kept too many for the budget: drop the least relevant kept ones
            kept = torch.nonzero(keep).flatten()
            keep[kept[relevance[kept].topk(excess, largest=False).indices]] = False
            self.evicted_by_budget += excess
        dropped = index[~keep.cpu()]
        self.controller.observe(n, n - dropped.numel())
        if dropped.numel() == 0:
            return None
        mask = torch.ones(n, dtype=torch.bool)
        mask[dropped] = False
        survivors = torch.nonzero(mask).flatten()
        at = survivors.to(self.accumulated.device)
        self.accumulated, self.recent, self.hidden = self.accumulated[at], self.recent[at], self.hidden[at]
        self.flags = self.flags[survivors]
        return survivors
