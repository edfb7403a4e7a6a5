"""Tier maintenance: one layer of ADMS with a compressed mid tier, and the ADM++ banks.

Per KV head the layer's slots are::

    [ sinks | mid, ascending in position: precision bank, compressed tier, replayed, sketches | recent ]

with per-slot state aligned with the slots: token count (0 = empty padding), kind, importance
score and the count-weighted mean position of the members (``center``). Every compressed slot
is a materialised row (rotated at its anchor); its position-free form is recovered by undoing
that rotation when it is compressed again, so no second copy is held.

A compression (every ``compression_interval`` evicted tokens, see :mod:`.config`):

1. **precision bank**: the ``E`` best mid tokens by score (coverage ranking; with dual fidelity
   sketches compete by energy per token and enter as promotions);
2. **compress** the demoted tokens with the tier into at most ``C`` slots per head (the
   controller's per-head budget when enabled);
3. **replay** (when the variance captured is below the threshold) the largest-residual tokens;
4. **anchor** the tier's slots (``anchor_mode``; fitted to recent queries with calibration);
5. **sketch** what was dropped (dual fidelity);
6. rebuild the mid tier sorted by position; the controller updates its budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ...compressors import (
    Compressor, CustomCompressor, LowRankCompressor, PointSet, SummaryCompressor, VQCompressor,
)
from ...compressors.base import pad_to_common_size
from ...selection import coverage_ranking
from ..base import LayerPolicy, SlotRewrite, SlotView
from ..scored import per_kv_head
from .anchors import anchor_positions, calibrate_anchors, member_logits
from .controller import BudgetController
from .fidelity import build_sketches, sketch_weights
from .importance import TokenScorer, exact_budgets
from .replay import pick_replays, take_out, variance_captured

EXACT, COMPRESSED, SKETCH, REPLAY, PROMOTED = 0, 1, 2, 3, 4


def build_compressor(config) -> Compressor | None:
    """The built-in compressor of ``config.compressor_type`` (``None`` for ``custom``)."""
    if config.compressor_type == "low_rank":
        return LowRankCompressor(config.rank, config.svd_max_tokens, config.coverage_segments, config.coverage_priority)
    if config.compressor_type == "vq":
        return VQCompressor(config.num_clusters)
    if config.compressor_type == "summary":
        return SummaryCompressor()
    return None


@dataclass
class _Rows:
    """Candidate mid rows ``(H, n, ...)`` with their state; ``take`` marks the rows that stay."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    take: torch.Tensor
    counts: torch.Tensor
    kind: torch.Tensor
    scores: torch.Tensor
    centers: torch.Tensor

    def cat(self, other: "_Rows") -> "_Rows":
        return _Rows(*(torch.cat([getattr(self, f.name), getattr(other, f.name)], dim=1) for f in fields(self)))


class ADMSLayer(LayerPolicy):
    """One layer's tiers. Per-slot state ``(H_kv, T)`` is kept aligned with the layer's slots."""

    needs_position_shift = True
    needs_rotary = True

    def __init__(self, config, monitor):
        self.config = config
        self.monitor = monitor
        self.sink, self.recent = config.sink_size, config.recent_size
        self.mid_limit = config.max_slots - self.sink - self.recent
        self.needs_attention = config.importance_metric == "attention" or config.calibrates
        self.compressor = build_compressor(config)
        adm_plus = config.sketch_slots or config.replay_slots or config.controller_headroom
        self.needs_logit_bias = config.compressor_type != "low_rank" or config.use_adaptive_budget or bool(adm_plus)
        self.scorer = TokenScorer(config.importance_metric)
        self.rotary = None
        self.layer = None
        self.counts: torch.Tensor | None = None  # float32 tokens per slot (0 = empty)
        self.kind: torch.Tensor | None = None  # int8 EXACT | COMPRESSED | SKETCH | REPLAY | PROMOTED
        self.scores: torch.Tensor | None = None  # float32 importance (summed over members)
        self.centers: torch.Tensor | None = None  # float64 mean original position of the members
        self.queries: torch.Tensor | None = None  # (H, <= W, D) calibration window, rotated at their positions
        self.controller: BudgetController | None = None
        self.mid_after_compression = 0
        self.counters = dict.fromkeys(
            ("compressions", "promotions", "replay_triggers", "replay_tokens", "calibrations"), 0)

    exact_only = False

    # -- wiring -----------------------------------------------------------------------------
    def bind_rotary(self, strategy) -> None:
        self.rotary = strategy

    def attach(self, layer) -> None:
        self.layer = layer

    def set_head_compressors(self, per_head: list) -> None:
        """Seed 000's ``cache.compressors[...] = obj``: one ``compress(K, V)`` object per KV head."""
        self.compressor = CustomCompressor(per_head)
        self.needs_logit_bias = True

    def max_slots(self) -> int | None:
        return self.config.max_slots

    @property
    def compressions(self) -> int:
        return self.counters["compressions"]

    # -- per-step ---------------------------------------------------------------------------
    def select(self, view: SlotView):
        self._append(view)
        return self._step(view)

    def observe(self, probs: torch.Tensor, view: SlotView):
        self._append(view)
        if self.config.importance_metric == "attention":
            self.scores = self.scores + per_kv_head(probs, view.positions.shape[0]).sum(dim=1).float()
        return self._step(view)

    def read_mask(self, query: torch.Tensor, keys: torch.Tensor) -> None:
        """The hook's one call with the queries: calibration keeps the last ``calibration_window``
        of them (mean over each KV head's query group, whose logit is the group's mean logit).
        Every slot stays readable."""
        if self.config.calibrates:
            batch, heads, q, dim = query.shape
            kv_heads = keys.shape[1]
            grouped = query.reshape(kv_heads, heads // kv_heads, q, dim).mean(dim=1).to(keys.dtype)
            window = grouped if self.queries is None else torch.cat([self.queries, grouped], dim=1)
            self.queries = window[:, -self.config.calibration_window:]
        return None

    def logit_bias(self, view: SlotView) -> torch.Tensor | None:
        bias = torch.zeros(view.positions.shape[0], view.num_slots, device=view.keys.device)
        if self.counts is not None:
            bias[:, : self.counts.shape[-1]] = self._weights().log()  # 0 for one token, -inf for empty slots
        return bias

    def _weights(self) -> torch.Tensor:
        """How many tokens each slot weighs as in attention."""
        sketch = (self.kind == SKETCH) | (self.kind == PROMOTED)
        return torch.where(sketch, sketch_weights(self.counts, self.config.sketch_reduction), self.counts)

    def _append(self, view: SlotView) -> None:
        q = view.new_tokens
        keys, values = view.keys[0, :, -q:], view.values[0, :, -q:]
        heads, device = keys.shape[0], keys.device
        state = (
            torch.ones(heads, q, device=device),
            torch.full((heads, q), EXACT, dtype=torch.int8, device=device),
            self.scorer(keys, values),
            view.positions[:, -q:].to(device, torch.float64),
        )
        if self.counts is None:
            self.counts, self.kind, self.scores, self.centers = state
            self.controller = self._build_controller(heads)
            return
        self.counts, self.kind, self.scores, self.centers = (
            torch.cat([old, new], dim=1) for old, new in zip((self.counts, self.kind, self.scores, self.centers), state))

    def _build_controller(self, heads: int) -> BudgetController | None:
        c = self.config
        if not c.enable_adaptive_controller:
            return None
        return BudgetController(c.compressed_capacity, c.controller_headroom, heads, c.controller_group_size,
                                c.controller_gain, c.controller_energy_floor, c.controller_energy_ceiling)

    def _step(self, view: SlotView):
        mid = view.num_slots - self.sink - self.recent
        rewrite = None
        # pending tokens may only use their reserved headroom (not slack left by a bank that is
        # not full yet), so the byte bound holds at every step
        if mid > 0 and (mid - self.mid_after_compression > self.config.pending_headroom or mid > self.mid_limit):
            rewrite = self._rebuild_mid(view)
        self.monitor.after_step(self, view.seen_tokens, self.counts.shape[1])
        return rewrite

    # -- compression ------------------------------------------------------------------------
    def _capacity(self, exact_budget: torch.Tensor) -> torch.Tensor:
        """Compressed slots per head ``(H,)``."""
        left = (self.config.mid_capacity + self.config.controller_headroom - exact_budget).clamp(min=0)
        if self.controller is None:
            return (self.config.mid_capacity - exact_budget).clamp(min=0)
        return self.controller.per_head().to(exact_budget.device).minimum(left)

    def _rebuild_mid(self, view: SlotView) -> SlotRewrite:
        if self.compressor is None:
            raise ValueError(
                "compressor_type='custom' needs a compressor: enable_adms_llm(model, compressor=obj, ...) or "
                "cache.compressors = {(layer, head): obj, ...} with obj.compress(K, V) -> (K', V')"
            )
        config = self.config
        self.counters["compressions"] += 1
        total, device = view.num_slots, view.keys.device
        lo, hi = self.sink, total - self.recent
        first_recent = view.seen_tokens - self.recent
        positions = view.positions.to(device)
        keys, values, where = view.keys[0, :, lo:hi], view.values[0, :, lo:hi], positions[:, lo:hi]
        counts, kind, scores, centers = (x[:, lo:hi] for x in (self.counts, self.kind, self.scores, self.centers))
        live = counts > 0
        token = live & ((kind == EXACT) | (kind == REPLAY))
        sketch = live & ((kind == SKETCH) | (kind == PROMOTED))
        tiered = live & (kind == COMPRESSED)

        # 1. the precision bank: tokens (and sketches, by energy per token) ranked by score
        energy = scores / counts.clamp(min=1)
        eligible = token | sketch if config.sketch_slots else token
        exact_budget = exact_budgets(config, values, token)
        ranking = coverage_ranking(energy.masked_fill(~eligible, float("-inf")), where, int(exact_budget.max()),
                                   config.coverage_segments, config.coverage_priority)
        precise = eligible & (torch.argsort(ranking, dim=-1) < exact_budget[:, None])
        self.counters["promotions"] += int((precise & (kind == SKETCH)).sum())
        demoted = token & ~precise

        # 2. compress the demoted tokens with the tier, in position-free space
        free_keys = self.rotary.shift_keys(keys[None].float(), (-where).cpu())[0]
        joining = demoted | tiered
        points = PointSet(free_keys, values.float(), counts * joining, centers, scores * joining)
        capacity = self._capacity(exact_budget)
        tier, assignment = self._compress(points, capacity)
        if assignment is None:
            dropped = torch.zeros_like(joining)
        else:
            dropped = joining & (assignment < 0)
            tier, assignment = self._replay_and_control(points, tier, assignment, demoted, where, first_recent)

        rows = _Rows(keys, values, where, precise, counts, torch.where(sketch & precise, PROMOTED, kind).to(torch.int8),
                     scores, centers)
        if bool(self.replayed.any()):
            rows = rows.cat(self._rows(keys, values, where, self.replayed, counts, REPLAY, scores, centers))
        if tier.size:
            anchors = self._anchors(tier, points, assignment, keys, counts, kind, first_recent)
            tier_keys = self.rotary.shift_keys(tier.keys[None].float(), anchors.cpu())[0].to(keys.dtype)
            rows = rows.cat(self._rows(tier_keys, tier.values.to(values.dtype), anchors, tier.counts > 0, tier.counts,
                                       COMPRESSED, tier.scores, tier.positions))
        if config.sketch_slots:
            rows = rows.cat(self._sketch_rows(free_keys, values, counts, scores, centers, sketch & ~precise, dropped,
                                              first_recent))
        return self._splice(view, rows, lo, hi)

    def _compress(self, points: PointSet, capacity: torch.Tensor) -> tuple[PointSet, torch.Tensor | None]:
        """The new tier and where each point went (``None``: the compressor cannot say)."""
        self.replayed = torch.zeros_like(points.counts, dtype=torch.bool)
        if int(capacity.max()) == 0 or not bool((points.counts > 0).any()):
            empty = pad_to_common_size(points, torch.zeros_like(self.replayed))
            return empty, torch.full_like(points.counts, -1, dtype=torch.long)
        tier = self.compressor.compress(points, capacity)
        # the budget must hold whatever a compressor returns: at most capacity[h] real slots per head
        real = tier.counts > 0
        keep = real & (real.cumsum(dim=-1) <= capacity[:, None])
        assignment = self.compressor.last_assignment
        if not bool(keep.eq(real).all()):
            from ...compressors.base import compose, pack

            tier, moved = pack(tier, keep)
            assignment = None if assignment is None else compose(assignment, moved)
        else:
            tier = pad_to_common_size(tier, keep)
        return tier, assignment

    def _replay_and_control(self, points, tier, assignment, demoted, where, first_recent):
        config = self.config
        if not (config.replay_slots or self.controller is not None):
            return tier, assignment
        energy, residual, active = variance_captured(points, tier, assignment)
        if config.replay_slots:
            triggered = active & (energy < config.energy_replay_threshold)
            # only tokens held exactly until now can be replayed exactly
            candidates = demoted & (assignment >= 0)
            self.replayed = pick_replays(residual, candidates, triggered, config.replay_slots)
            if bool(self.replayed.any()):
                tier = take_out(tier, points, assignment, self.replayed, self.compressor.merges_tokens)
                assignment = torch.where(self.replayed, -1, assignment)
            self.counters["replay_triggers"] += int(triggered.sum())
            self.counters["replay_tokens"] += int(self.replayed.sum())
        if self.controller is not None:
            self.controller.update(energy, active)
        return tier, assignment

    def _anchors(self, tier, points, assignment, keys, counts, kind, first_recent) -> torch.Tensor:
        low, high = self.sink, first_recent
        anchors = anchor_positions(tier, self.config.anchor_mode, float(low), float(high))
        if not self.config.calibrates or self.queries is None or assignment is None:
            return anchors
        scale = keys.shape[-1] ** -0.5
        weights = torch.where((kind == SKETCH) | (kind == PROMOTED),
                              sketch_weights(counts, self.config.sketch_reduction), counts)
        targets = member_logits(self.queries, keys, weights.clamp(min=1e-30).log(), assignment, tier.size, scale)
        biases = (tier.counts if self.compressor.merges_tokens else (tier.counts > 0).float()).clamp(min=1e-30).log()
        fitted = calibrate_anchors(self.queries, tier.keys.float(), biases, anchors, targets, self.rotary, scale,
                                   self.config.calibration_regularization, low, high)
        self.counters["calibrations"] += 1
        return torch.where(tier.counts > 0, fitted, anchors)

    def _sketch_rows(self, free_keys, values, counts, scores, centers, kept_sketches, dropped, first_recent) -> _Rows:
        pool = kept_sketches | dropped
        points = PointSet(free_keys, values.float(), counts * pool, centers, scores * pool)
        sketches = build_sketches(points, self.config.sketch_slots, self.config.sketch_reduction)
        anchors = sketches.positions.round().long().clamp(self.sink, max(self.sink, first_recent - 1))
        sketch_keys = self.rotary.shift_keys(sketches.keys[None].float(), anchors.cpu())[0].to(values.dtype)
        return self._rows(sketch_keys, sketches.values.to(values.dtype), anchors, sketches.counts > 0, sketches.counts,
                          SKETCH, sketches.scores, sketches.positions)

    @staticmethod
    def _rows(keys, values, positions, take, counts, kind, scores, centers) -> _Rows:
        return _Rows(keys, values, positions, take, counts, torch.full_like(take, kind, dtype=torch.int8), scores, centers)

    def _splice(self, view: SlotView, rows: _Rows, lo: int, hi: int) -> SlotRewrite:
        """The new mid: the rows that stay, ascending in position, empty rows last."""
        take = rows.take
        width = int(take.sum(dim=1).max())
        order = torch.argsort(torch.where(take, rows.positions.double(), float("inf")), dim=-1, stable=True)[:, :width]
        taken = take.gather(1, order)
        if not self.needs_logit_bias and not bool(taken.all()):
            raise RuntimeError("ADMS produced empty slots without a logit bias to mask them")
        index = order.unsqueeze(-1).expand(-1, -1, rows.keys.shape[-1])

        def splice(full: torch.Tensor, middle: torch.Tensor) -> torch.Tensor:
            return torch.cat([full[..., :lo], middle, full[..., hi:]], dim=-1)

        new_keys = torch.cat([view.keys[:, :, :lo], rows.keys.gather(1, index)[None], view.keys[:, :, hi:]], dim=2)
        new_values = torch.cat([view.values[:, :, :lo], rows.values.gather(1, index)[None], view.values[:, :, hi:]], dim=2)
        positions = splice(view.positions.to(rows.positions.device), rows.positions.gather(1, order)).cpu()
        self.counts = splice(self.counts, rows.counts.gather(1, order) * taken)
        self.kind = splice(self.kind, rows.kind.gather(1, order))
        self.scores = splice(self.scores, rows.scores.gather(1, order))
        self.centers = splice(self.centers, rows.centers.gather(1, order))
        self.mid_after_compression = width
        return SlotRewrite(new_keys, new_values, positions)

    # -- accounting -------------------------------------------------------------------------
    @property
    def tier(self) -> PointSet | None:
        """The compressed tier ``(H, c)`` as position-free points (rows un-rotated from their anchors)."""
        if self.counts is None or self.layer is None:
            return None
        chosen = (self.kind == COMPRESSED) & (self.counts > 0)
        keys = self.rotary.shift_keys(self.layer.keys.float(), (-self.layer.positions))[0]
        points = PointSet(keys, self.layer.values[0].float(), self.counts, self.centers, self.scores)
        return pad_to_common_size(points, chosen)

    def layer_stats(self, seen: int) -> dict[str, float]:
        heads = self.counts.shape[0]
        mid = slice(self.sink, max(self.sink, self.counts.shape[1] - self.recent))
        live = self.counts[:, mid] > 0
        kind = self.kind[:, mid]
        exact = (live & ((kind == EXACT) | (kind == REPLAY))).sum().item() / heads
        represented = self.counts.sum().item() / heads
        return {"exact": exact, "compressed": live.sum().item() / heads - exact, "dropped": seen - represented,
                "slots": self.counts.shape[1]}

    def stats(self) -> dict[str, float]:
        if self.counts is None or self.layer is None:
            return {}
        layer_stats = self.layer_stats(self.layer.seen_tokens)
        heads = self.counts.shape[0]
        live = self.counts > 0
        result = {
            "adms_exact_slots": layer_stats["exact"] * heads,
            "adms_compressed_slots": layer_stats["compressed"] * heads,
            "adms_dropped_tokens": layer_stats["dropped"] * heads,
            "adms_materialized_bytes": 2 * self.layer.keys.numel() * self.layer.keys.element_size(),
            "adms_sketches": int((live & ((self.kind == SKETCH) | (self.kind == PROMOTED))).sum()),
            "adms_budget_adjustments": 0 if self.controller is None else self.controller.adjustments,
        }
        result.update({f"adms_{name}": value for name, value in self.counters.items()})
        return result

    def state_bytes(self) -> int:
        if self.counts is None:
            return 0
        per_slot = sum(t.numel() * t.element_size() for t in (self.counts, self.kind, self.scores, self.centers))
        window = 0 if self.queries is None else self.queries.numel() * self.queries.element_size()
        return per_slot + window
