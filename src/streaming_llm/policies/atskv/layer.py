"""ATSKV's per-layer rule: score the evictable slots of every KV head with the relevance
predictor and keep ``M = 1[r > τ]`` (:mod:`.controller`), never more than ``cache_size`` slots.

Per slot and KV head the layer keeps what the features need across steps (:mod:`.features`):
accumulated and recent attention, and the predictor's share of the logit from the features fixed
when the token arrived (the projected hidden state and the token-type flags: one float instead of
their 12, which at equal bytes leaves room for more slots); last-query attention, norms, age and
position are read afresh each step. While a ``recorder`` is set (train-relevance's bounded runs)
the layer keeps those 12 features themselves, since the recorder needs every column. The ``start_size``
first tokens (attention sinks) and the ``recent_size`` newest slots are never evicted; the
others are the candidates.

Each KV head keeps its own tokens, as H2O's do. The cache holds the same number of slots in
every head, so a step evicts from every head the same number ``k``: the mean over heads of
``#{r_h <= τ_h}`` (rounded), at least what the budget needs; each head drops its ``k`` least
relevant candidates.

Shapes: probabilities ``(B, H_q, q, n)`` -> per-slot statistics ``(H_kv, n)``.
"""

from __future__ import annotations

import torch

from ..base import LayerPolicy, SlotView
from ..scored import per_kv_head
from .controller import ThresholdController
from .features import HIDDEN_DIMS, STATIC_FEATURES, TOKEN_FLAGS, dynamic_features, head_norms, recent_update, \
    static_features
from .predictor import RelevancePredictor


def _gather(state: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows ``keep`` ``(H, T')`` of ``state`` ``(H, n, ...)`` along the slot axis."""
    index = keep.to(state.device).view(*keep.shape, *([1] * (state.dim() - 2)))
    return state.gather(1, index.expand(*keep.shape, *state.shape[2:]))


class RelevanceEviction(LayerPolicy):
    needs_attention = True
    needs_position_shift = True

    def __init__(self, cache_size: int, start_size: int, recent_size: int, beta: float, q_gain: float):
        self.cache_size = cache_size
        self.start_size = start_size
        self.recent_size = recent_size
        self.controller = ThresholdController(cache_size, beta, q_gain)
        self.predictor: RelevancePredictor | None = None  # bound by ATSKVCache.attach
        self._prior: RelevancePredictor | None = None
        self.tap = None
        self.layer_index = 0
        self.accumulated: torch.Tensor | None = None  # (H_kv, n) aligned with the stored slots
        self.recent: torch.Tensor | None = None  # (H_kv, n)
        #: (H_kv, n) static logits, or (H_kv, n, len(STATIC_FEATURES)) the features while recording
        self.static: torch.Tensor | None = None
        #: called with (layer, step, positions (H, c), features (H, c, F)) of the scored slots
        #: (train-relevance's bounded runs)
        self.recorder = None
        self.evicted_by_threshold = 0
        self.evicted_by_budget = 0

    def bind(self, tap, layer_index: int, predictor: RelevancePredictor) -> None:
        self.tap, self.layer_index, self.predictor = tap, layer_index, predictor

    def max_slots(self) -> int | None:
        return self.cache_size

    def state_bytes(self) -> int:
        if self.accumulated is None:
            return 0
        return 4 * (self.accumulated.numel() + self.recent.numel() + self.static.numel())

    def stats(self) -> dict[str, float]:
        return {"atskv_evicted_by_threshold": self.evicted_by_threshold,
                "atskv_evicted_by_budget": self.evicted_by_budget, "atskv_q": self.controller.q}

    # -- state -----------------------------------------------------------------------------
    def _new_hidden(self, q: int, device: torch.device) -> torch.Tensor:
        hidden = None if self.tap is None else self.tap.take_hidden(self.layer_index, q)
        projection = None if self.predictor is None else self.predictor.projection
        if hidden is None or projection is None:
            return torch.zeros(q, HIDDEN_DIMS, device=device)
        return (hidden.float() @ projection.to(hidden.device)).to(device)

    def _new_flags(self, q: int) -> torch.Tensor:
        ids = None if self.tap is None else self.tap.new_token_ids(q)
        table = None if self.predictor is None else self.predictor.flags
        if ids is None or table is None:
            return torch.zeros(q, len(TOKEN_FLAGS), dtype=torch.uint8)
        return table[ids.clamp(0, table.shape[0] - 1)]

    def _predictor(self) -> RelevancePredictor:
        if self.predictor is not None:
            return self.predictor
        if self._prior is None:  # unbound (a bare layer policy): the prior, built once, not per step
            self._prior = RelevancePredictor.prior(self.layer_index + 1)
        return self._prior

    def _recording(self) -> bool:
        """Whether :attr:`static` holds the static features themselves (decided at the first step)."""
        return self.static.dim() == 3

    def _new_static(self, q: int, pad: int, device: torch.device) -> torch.Tensor:
        """The static features ``(pad, S)`` (recording) or logits ``(pad,)`` of the last ``pad`` of
        this step's ``q`` tokens."""
        static = static_features(self._new_hidden(q, device)[q - pad:], self._new_flags(q)[q - pad:].to(device))
        return static if self._recording() else self._predictor().static_logits(self.layer_index, static)

    def _grow(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor:
        """Fold this step's ``probs`` ``(H_kv, q, n)`` into the per-slot state; returns the last
        query's attention ``(H_kv, n)``."""
        heads, n, q = probs.shape[0], view.num_slots, view.new_tokens
        if self.accumulated is None:
            self.accumulated = probs.new_zeros(heads, 0)
            self.recent = probs.new_zeros(heads, 0)
            recording = self.recorder is not None
            self.static = probs.new_zeros(heads, 0, *((len(STATIC_FEATURES),) if recording else ()))  # its shape is what _recording() reads
        pad = n - self.accumulated.shape[1]
        zeros = probs.new_zeros(heads, pad)
        self.accumulated = torch.cat([self.accumulated, zeros], dim=1) + probs.sum(dim=1)
        self.recent = recent_update(torch.cat([self.recent, zeros], dim=1), probs)
        new_static = self._new_static(q, pad, probs.device)
        self.static = torch.cat([self.static, new_static.expand(heads, *new_static.shape)], dim=1)
        return probs[:, -1, :]

    # -- selection -------------------------------------------------------------------------
    def candidates(self, view: SlotView) -> torch.Tensor:
        """Slot indices ``(c,)`` evictable in every head: the sinks are the first slots of each
        head (never evicted, positions ascending) and the recent window its last ones."""
        n = view.num_slots
        index = torch.arange(n)
        return index[(view.positions[0] >= self.start_size) & (index < n - self.recent_size)]

    def relevance(self, index: torch.Tensor, last: torch.Tensor, view: SlotView) -> torch.Tensor:
        """``r`` ``(H_kv, c)`` of the slots ``index`` ``(c,)``."""
        at = index.to(last.device)
        positions = view.positions[:, index]
        dynamic = dynamic_features(
            self.accumulated[:, at], self.recent[:, at], last[:, at], (view.seen_tokens - 1 - positions).to(last.device),
            at, view.num_slots, head_norms(view.keys[..., at, :]), head_norms(view.values[..., at, :]))
        static = self.static[:, at]
        if not self._recording():
            return self._predictor().relevance_folded(self.layer_index, dynamic, static)
        # recording: the whole row, in FEATURE_NAMES order (h, the dynamic columns, the flags)
        features = torch.cat([static[..., :HIDDEN_DIMS], dynamic, static[..., HIDDEN_DIMS:]], dim=-1)
        self.recorder(self.layer_index, view.seen_tokens - 1, positions, features)
        return self._predictor().relevance(self.layer_index, features)

    def observe(self, probs: torch.Tensor, view: SlotView) -> torch.Tensor | None:
        num_kv_heads = view.positions.shape[0]
        last = self._grow(per_kv_head(probs.float(), num_kv_heads), view)
        n = view.num_slots
        if n <= self.cache_size and self.controller.q_integral <= 0:
            return None  # under the target and nothing learnt to evict early: keep everything
        index = self.candidates(view)
        relevance = self.relevance(index, last, view)
        below = (~self.controller.keep_mask(relevance, n)).sum(dim=-1).float().mean()
        by_threshold = int(below.round())
        evict = min(index.numel(), max(by_threshold, n - self.cache_size))
        self.evicted_by_threshold += min(by_threshold, evict)
        self.evicted_by_budget += evict - min(by_threshold, evict)
        self.controller.observe(n, n - evict)
        if evict == 0:
            return None
        chosen = index[relevance.topk(index.numel() - evict, dim=-1).indices.cpu()]  # (H, c - evict)
        fixed = torch.ones(n, dtype=torch.bool)
        fixed[index] = False
        kept = torch.arange(n)[fixed].expand(num_kv_heads, -1)
        keep = torch.cat([kept, chosen], dim=-1).sort(dim=-1).values  # (H, n - evict)
        self.accumulated, self.recent = _gather(self.accumulated, keep), _gather(self.recent, keep)
        self.static = _gather(self.static, keep)
        return keep
