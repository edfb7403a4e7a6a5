"""``adms``: Adaptive Dual-Memory Streaming — sinks, a compressed mid-memory, a recent window.

Seed 000 (ADMS). Per decoder layer and KV head the cache holds three tiers::

    [ sinks (exact) | mid: importance-selected exact tokens + compressed slots | recent (exact) ]

The decoding step of seed 000, as implemented here:

1. **Append** the new tokens after the recent window.
2. **Evict overflow**: tokens leaving the recent window (the last ``recent_size`` tokens) join the
   mid tier as *pending* exact tokens.
3. **Score & select** (every ``compression_interval`` evicted tokens, or every
   ``compressed_budget // 4 + 1`` when that is fewer, see the budgets below): each mid exact
   token has an importance score
   (``importance_metric``); per KV head the best ``E`` stay exact, with a ``coverage_priority``
   share of ``E`` spread over ``coverage_segments`` spans of the timeline.
4. **Compress** the rest, together with the current compressed slots, into at most ``C`` slots
   per head with the ``compressor_type`` compressor (:mod:`streaming_llm.compressors`), in
   position-free space (the keys' rotary rotation undone first).
5. **Anchor** each compressed slot at a position (``anchor_mode``): ``mean`` — the count-weighted
   mean original position of its members; ``grid`` — evenly spaced over the evicted span
   ``[sinks, first recent position)``, in the order of the slots' mean positions (slot ``i`` of
   ``c`` at ``lo + (i + 1/2)(hi - lo)/c``); ``hybrid`` — the midpoint of the two. The slot's key
   is rotated at its anchor; the mid tier is kept sorted by position.
6. **Attend** over the union: with ``enable_pos_shift`` the cache presents its slots at
   contiguous positions (StreamingLLM's remapping), so anchors fix each slot's order and so its
   distance to the query; without it keys keep their own (anchor) rotation.

Budgets (per layer and KV head, in slots): ``sink + compressed_budget + recent_size`` after every
update, whatever the interval (seed 004, bug 1: a skipped compression must still respect the
budget). ``h = min(compression_interval - 1, compressed_budget // 4)`` slots of the mid budget
hold pending tokens between compressions; the other ``B' = compressed_budget - h`` are split into
``E = max(min_importance_tokens, round(importance_ratio * B'))`` exact slots (at most ``B'``)
and ``C = B' - E`` compressed slots. With ``use_adaptive_budget`` each head's ``E`` scales with
the variance of its mid values (heads whose values vary more are harder to summarise and keep
more tokens exactly), the head's ``C`` shrinking to match; dense storage then pads heads to the
largest count with empty slots (masked out by a ``-inf`` logit bias).

Bytes: ``cache_bytes`` counts the tiers' representation (exact rows; low-rank coefficients and
bases; centroids with counts) plus per-slot positions and scores. For speed this implementation
also keeps the compressed rows materialised in the layer's K/V tensors, reported separately as
the ``adms_materialized_bytes`` stat (a deployment would rebuild them per step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch

from ..compressors import (
    Compressor, CustomCompressor, LowRankCompressor, PointSet, SummaryCompressor, VQCompressor,
)
from ..compressors.base import pad_to_common_size
from ..selection import coverage_ranking
from ..checks import check_fraction
from .base import POSITION_BYTES, LayerPolicy, PolicyConfig, SlotRewrite, SlotView, check_int
from .scored import per_kv_head
from .streaming import dynamic_sink_size

logger = logging.getLogger("streaming_llm.adms")

_SCORE_BYTES = 4
_COUNT_BYTES = 4


def _exact_row_bytes(num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
    """Bytes of one exact slot of one layer: K and V rows, a position and a score per KV head."""
    return num_kv_heads * (2 * head_dim * element_bytes + POSITION_BYTES + _SCORE_BYTES)


@dataclass
class ADMSConfig(PolicyConfig):
    """Parameters (names and defaults of seed 000's tables)
    ----------
    start_size: attention-sink tokens (>= 0); with ``enable_dynamic_sink`` a floor.
    max_seq_length: context length the dynamic sink is sized for (>= 1).
    enable_dynamic_sink: sink = max(start_size, floor(max_seq_length / 100)).
    recent_size: most recent tokens kept exactly (>= 1).
    compressed_budget: mid-tier slots per KV head (>= 0), exact and compressed together.
    compressor_type: ``low_rank`` | ``vq`` | ``summary`` | ``custom``.
    rank: rank of the low-rank factors (>= 1).
    num_clusters: most centroids per head for ``vq`` (>= 1).
    compression_interval: compress every this many evicted tokens (>= 1).
    svd_max_tokens: most rows the low-rank basis is fitted on (>= 1).
    importance_ratio: share of the mid budget kept as exact tokens, in [0, 1].
    importance_metric: ``value_norm`` | ``key_norm`` | ``mixed`` | ``attention`` (accumulated
        attention received, through the attention hook).
    min_importance_tokens: floor on the exact share (>= 0).
    use_adaptive_budget: per-head exact share from the variance of the head's values.
    coverage_segments: timeline spans for coverage (>= 1).
    coverage_priority: share of each selection spread over the spans, in [0, 1].
    anchor_mode: ``grid`` | ``mean`` | ``hybrid`` (see the module docstring).
    log_every: log the ``[ADMS Stats]``/``[ADMS Cache]`` lines every this many tokens (0 = never).
    """

    start_size: int = 4
    max_seq_length: int = 32768
    enable_dynamic_sink: bool = True
    recent_size: int = 2000
    compressed_budget: int = 128
    compressor_type: Literal["low_rank", "vq", "summary", "custom"] = "low_rank"
    rank: int = 16
    num_clusters: int = 64
    compression_interval: int = 8
    svd_max_tokens: int = 512
    importance_ratio: float = 0.5
    importance_metric: Literal["value_norm", "key_norm", "mixed", "attention"] = "value_norm"
    min_importance_tokens: int = 4
    use_adaptive_budget: bool = False
    coverage_segments: int = 4
    coverage_priority: float = 0.3
    anchor_mode: Literal["grid", "mean", "hybrid"] = "mean"
    log_every: int = 0

    name: ClassVar[str] = "adms"
    size_fields: ClassVar[tuple[str, ...]] = ("start_size", "recent_size", "compressed_budget", "compressor_type",
                                              "importance_ratio", "rank")
    label_fields: ClassVar[dict[str, str]] = {"start_size": "sink", "recent_size": "recent", "compressed_budget": "mid",
                                              "compressor_type": "", "importance_ratio": "ratio",
                                              "importance_metric": ""}

    def validate(self) -> None:
        check_int("start_size", self.start_size, 0)
        check_int("max_seq_length", self.max_seq_length, 1)
        check_int("recent_size", self.recent_size, 1)
        check_int("compressed_budget", self.compressed_budget, 0)
        for name in ("rank", "num_clusters", "compression_interval", "svd_max_tokens", "coverage_segments"):
            check_int(name, getattr(self, name), 1)
        check_int("min_importance_tokens", self.min_importance_tokens, 0)
        check_int("log_every", self.log_every, 0)
        check_fraction("importance_ratio", self.importance_ratio)
        check_fraction("coverage_priority", self.coverage_priority)

    # -- derived budgets --------------------------------------------------------------------
    @property
    def sink_size(self) -> int:
        return dynamic_sink_size(self.start_size, self.max_seq_length) if self.enable_dynamic_sink else self.start_size

    @property
    def pending_headroom(self) -> int:
        """Mid slots reserved for tokens evicted between two compressions."""
        return min(self.compression_interval - 1, self.compressed_budget // 4)

    @property
    def mid_capacity(self) -> int:
        """Mid slots right after a compression (exact + compressed)."""
        return self.compressed_budget - self.pending_headroom

    @property
    def exact_budget(self) -> int:
        wanted = max(self.min_importance_tokens, round(self.importance_ratio * self.mid_capacity))
        return min(self.mid_capacity, wanted)

    @property
    def max_slots(self) -> int:
        return self.sink_size + self.compressed_budget + self.recent_size

    # -- equal memory -----------------------------------------------------------------------
    def layer_bytes(self, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
        """Most bytes one layer's cache can hold (without adaptive budgets): sinks, recent,
        pending and exact mid rows at full size, compressed slots in the compressor's form."""
        exact_row = _exact_row_bytes(num_kv_heads, head_dim, element_bytes)
        exact_rows = self.sink_size + self.recent_size + self.pending_headroom + self.exact_budget
        compressed = self.mid_capacity - self.exact_budget
        if self.compressor_type == "low_rank":
            rank = min(self.rank, head_dim)
            row = num_kv_heads * (2 * rank * element_bytes + POSITION_BYTES + _SCORE_BYTES)
            bases = 2 * num_kv_heads * rank * head_dim * element_bytes if compressed else 0
        else:
            row = exact_row + num_kv_heads * _COUNT_BYTES
            bases = 0
            if self.compressor_type == "vq":  # never more centroids than num_clusters
                compressed = min(compressed, self.num_clusters)
        return exact_rows * exact_row + compressed * row + bases

    def sized_to_bytes(self, geometry, layer_bytes: int) -> "ADMSConfig":
        """The recent window that fills ``layer_bytes`` per layer, sinks and mid budget fixed."""
        fixed = replace(self, recent_size=1)
        row = fixed.layer_bytes(geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)
        per_recent = _exact_row_bytes(geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)
        recent = 1 + (layer_bytes - row) // per_recent
        if recent < 1:
            raise ValueError(
                f"{layer_bytes} bytes per layer cannot hold {self.sink_size} sinks and a mid budget of "
                f"{self.compressed_budget}; lower compressed_budget or raise cache_bytes"
            )
        return replace(self, recent_size=int(recent))

    def max_cache_bytes(self, geometry) -> int:
        return geometry.num_layers * self.layer_bytes(geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)

    def sized(self, slots: int) -> "ADMSConfig":
        recent = slots - self.sink_size - self.compressed_budget
        if recent < 1:
            raise ValueError(f"{slots} slots leave no recent window after {self.sink_size} sinks and a mid budget of {self.compressed_budget}")
        return replace(self, recent_size=recent)

    def cache_class(self) -> type:
        from ..adms_cache import ADMSKVCache

        return ADMSKVCache

    def build_layer_policies(self, num_layers: int) -> list[LayerPolicy]:
        monitor = ADMSMonitor(self)
        monitor.layers = [ADMSLayer(self, monitor) for _ in range(num_layers)]
        return list(monitor.layers)


def build_compressor(config: ADMSConfig) -> Compressor | None:
    """The built-in compressor of ``config.compressor_type`` (``None`` for ``custom``)."""
    if config.compressor_type == "low_rank":
        return LowRankCompressor(config.rank, config.svd_max_tokens, config.coverage_segments, config.coverage_priority)
    if config.compressor_type == "vq":
        return VQCompressor(config.num_clusters)
    if config.compressor_type == "summary":
        return SummaryCompressor()
    return None


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


class ADMSMonitor:
    """The layers of one cache; logs seed 001/004's lines every ``log_every`` tokens."""

    def __init__(self, config: ADMSConfig):
        self.log_every = config.log_every
        self.expected_max = config.max_slots
        self.layers: list["ADMSLayer"] = []
        self.last_logged = 0

    def after_step(self, layer: "ADMSLayer", seen: int) -> None:
        """Called by every layer after its step; the last layer logs when a multiple of
        ``log_every`` was crossed."""
        if not self.log_every or layer is not self.layers[-1] or seen // self.log_every <= self.last_logged // self.log_every:
            return
        self.last_logged = seen
        stats = [member.layer_stats(seen) for member in self.layers if member.counts is not None]

        def mean(key):
            return sum(s[key] for s in stats) / len(stats)

        logger.info(
            "[ADMS Stats @ %d] Avg per head: exact=%.1f, compressed=%.1f, dropped=%.1f",
            seen, mean("exact"), mean("compressed"), mean("dropped"),
        )
        actual = int(max(s["slots"] for s in stats))
        logger.info(
            "[ADMS Cache @ %d] Actual size: %d, Expected max: %d, Ratio: %.2f%%",
            seen, actual, self.expected_max, 100.0 * actual / max(seen, 1),
        )
        if actual > 1.5 * self.expected_max:
            logger.warning("[ADMS WARNING] Cache size %d exceeds expected %d by >50%%!", actual, self.expected_max)


class ADMSLayer(LayerPolicy):
    """One layer's three tiers. Per-slot state ``(H_kv, T)`` is kept aligned with the layer's slots."""

    needs_position_shift = True
    needs_rotary = True

    def __init__(self, config: ADMSConfig, monitor: ADMSMonitor):
        self.config = config
        self.monitor = monitor
        self.sink, self.recent, self.budget = config.sink_size, config.recent_size, config.compressed_budget
        self.needs_attention = config.importance_metric == "attention"
        self.compressor = build_compressor(config)
        self.needs_logit_bias = config.compressor_type != "low_rank" or config.use_adaptive_budget
        self.rotary = None
        self.layer = None
        self.counts: torch.Tensor | None = None  # float32: tokens per slot (1 exact, c compressed, 0 empty)
        self.compressed: torch.Tensor | None = None  # bool: slot belongs to the compressed tier
        self.scores: torch.Tensor | None = None  # float32 importance
        self.tier: PointSet | None = None  # the compressed tier, position-free
        self.norm_means: torch.Tensor | None = None  # running means of (value, key) norms, "mixed"
        self.mid_after_compression = 0
        self.compressions = 0

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

    # -- per-step ---------------------------------------------------------------------------
    def select(self, view: SlotView):
        self._append(view)
        return self._step(view)

    def observe(self, probs: torch.Tensor, view: SlotView):
        self._append(view)
        received = per_kv_head(probs, view.positions.shape[0]).sum(dim=1)  # (H_kv, T)
        self.scores = self.scores + received.float()
        return self._step(view)

    def logit_bias(self, view: SlotView) -> torch.Tensor | None:
        stored = 0 if self.counts is None else self.counts.shape[-1]
        heads = view.positions.shape[0]
        bias = torch.zeros(heads, view.num_slots, device=view.keys.device)
        if stored:
            bias[:, :stored] = self.counts.log()  # log 1 = 0 for exact slots, -inf for empty ones
        return bias

    def _append(self, view: SlotView) -> None:
        q, keys, values = view.new_tokens, view.keys[0, :, -view.new_tokens:], view.values[0, :, -view.new_tokens:]
        heads = keys.shape[0]
        new_scores = self._token_scores(keys, values)
        ones = torch.ones(heads, q, device=keys.device)
        if self.counts is None:
            self.counts, self.compressed, self.scores = ones, ones.bool().logical_not(), new_scores
            return
        self.counts = torch.cat([self.counts, ones], dim=1)
        self.compressed = torch.cat([self.compressed, torch.zeros_like(ones, dtype=torch.bool)], dim=1)
        self.scores = torch.cat([self.scores, new_scores], dim=1)

    def _token_scores(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Importance ``(H, q)`` of new tokens: norms (rotation keeps key norms), or 0 to be
        accumulated from attention."""
        metric = self.config.importance_metric
        if metric == "attention":
            return torch.zeros(keys.shape[:2], device=keys.device)
        value_norm, key_norm = values.float().norm(dim=-1), keys.float().norm(dim=-1)
        if metric == "value_norm":
            return value_norm
        if metric == "key_norm":
            return key_norm
        # mixed: each norm relative to its running mean per head, so neither dominates by scale
        means = torch.stack([value_norm.mean(dim=1), key_norm.mean(dim=1)])
        self.norm_means = means if self.norm_means is None else 0.99 * self.norm_means + 0.01 * means
        return 0.5 * (value_norm / self.norm_means[0, :, None] + key_norm / self.norm_means[1, :, None])

    def _step(self, view: SlotView):
        mid = view.num_slots - self.sink - self.recent
        rewrite = None
        if mid > 0:
            # pending tokens may only use their reserved headroom (not slack left by a tier that
            # is not full yet), so the byte bound of ``layer_bytes`` holds at every step
            pending = mid - self.mid_after_compression
            if pending > self.config.pending_headroom or mid > self.budget:
                rewrite = self._compress(view)
        self.monitor.after_step(self, view.seen_tokens)
        return rewrite

    # -- compression ------------------------------------------------------------------------
    def _exact_budgets(self, values: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        """Exact slots per head ``(H,)``."""
        heads = values.shape[0]
        base = self.config.exact_budget
        if not self.config.use_adaptive_budget or not bool(exact.any()):
            return torch.full((heads,), base, device=values.device)
        weights = exact.float().unsqueeze(-1)
        n = weights.sum(dim=1).clamp(min=1)
        mean = (values.float() * weights).sum(dim=1) / n
        variance = (((values.float() - mean[:, None]) ** 2) * weights).sum(dim=1).div(n).mean(dim=-1)  # (H,)
        share = variance / variance.mean().clamp(min=1e-12)
        low = min(self.config.min_importance_tokens, self.config.mid_capacity)
        return (base * share).round().long().clamp(low, self.config.mid_capacity)

    @property
    def exact_only(self) -> bool:
        """No compressed share and the same exact budget in every head: selection alone."""
        config = self.config
        return not config.use_adaptive_budget and config.exact_budget == config.mid_capacity

    def _compress(self, view: SlotView) -> "SlotRewrite | torch.Tensor":
        if self.compressor is None:
            raise ValueError(
                "compressor_type='custom' needs a compressor: enable_adms_llm(model, compressor=obj, ...) or "
                "cache.compressors = {(layer, head): obj, ...} with obj.compress(K, V) -> (K', V')"
            )
        if self.exact_only:
            return self._keep_top_exact(view)
        return self._rebuild_mid(view)

    def _keep_top_exact(self, view: SlotView) -> torch.Tensor:
        """Exact-only step: the slots ``(H, T')`` to keep — sinks, the ``E`` best mid tokens by
        coverage ranking, the recent window. The same tokens as :meth:`_rebuild_mid` would keep
        (mid slots are already in position order and none is empty), as one index selection
        instead of a rebuilt mid tier: this is the per-step cost that decides ADMS's speed."""
        total, device = view.num_slots, view.keys.device
        lo, hi = self.sink, total - self.recent
        ranking = coverage_ranking(
            self.scores[:, lo:hi], view.positions[:, lo:hi].to(device), self.config.exact_budget,
            self.config.coverage_segments, self.config.coverage_priority,
        )
        kept = min(self.config.exact_budget, hi - lo)
        chosen = ranking[:, :kept].sort(dim=-1).values + lo
        heads = chosen.shape[0]
        keep = torch.cat([
            torch.arange(lo, device=device).expand(heads, lo),
            chosen,
            torch.arange(hi, total, device=device).expand(heads, total - hi),
        ], dim=1)
        self.counts = self.counts.gather(1, keep)
        self.compressed = self.compressed.gather(1, keep)
        self.scores = self.scores.gather(1, keep)
        self.mid_after_compression = kept
        self.compressions += 1
        return keep

    def _rebuild_mid(self, view: SlotView) -> SlotRewrite:
        """General step: keep the best exact tokens, fold the rest into the compressed tier,
        anchor its slots and rebuild the mid tier sorted by position."""
        total, device = view.num_slots, view.keys.device
        lo, hi = self.sink, total - self.recent  # mid slots [lo, hi)
        positions = view.positions.to(device)
        mid_positions = positions[:, lo:hi]
        mid_keys, mid_values = view.keys[0, :, lo:hi], view.values[0, :, lo:hi]
        exact = ~self.compressed[:, lo:hi] & (self.counts[:, lo:hi] > 0)

        exact_budget = self._exact_budgets(mid_values, exact)
        ranking = coverage_ranking(
            self.scores[:, lo:hi].masked_fill(~exact, float("-inf")), mid_positions, int(exact_budget.max()),
            self.config.coverage_segments, self.config.coverage_priority,
        )
        rank = torch.argsort(ranking, dim=-1)
        keep_exact = exact & (rank < exact_budget[:, None])
        self._fold_into_tier(mid_keys, mid_values, mid_positions, self.scores[:, lo:hi], exact & ~keep_exact, exact_budget)

        # the new mid: kept exact rows and the tier's rows, ascending in position, empty rows last
        candidates = _Candidates(
            mid_keys, mid_values, mid_positions, keep_exact, self.counts[:, lo:hi], torch.zeros_like(exact),
            self.scores[:, lo:hi],
        )
        if self.tier is not None:  # exact-only configurations have no tier: nothing to anchor
            tier = self.tier
            first_recent = view.seen_tokens - self.recent
            anchors = anchor_positions(tier, self.config.anchor_mode, float(self.sink), float(first_recent))
            tier_keys = self.rotary.shift_keys(tier.keys[None].float(), anchors.cpu())[0].to(mid_keys.dtype)
            candidates = candidates.cat(_Candidates(
                tier_keys, tier.values.to(mid_values.dtype), anchors.to(device), tier.counts > 0, tier.counts,
                torch.ones_like(tier.counts, dtype=torch.bool), tier.scores,
            ))
        take = candidates.take
        width = int(take.sum(dim=1).max())
        order = torch.argsort(
            torch.where(take, candidates.positions.double(), float("inf")), dim=-1, stable=True
        )[:, :width]
        taken = take.gather(1, order)
        counts = candidates.counts.gather(1, order) * taken
        if not self.needs_logit_bias and not bool(taken.all()):
            raise RuntimeError("ADMS produced empty slots without a logit bias to mask them")
        compressed = candidates.compressed.gather(1, order)
        scores = candidates.scores.gather(1, order)
        rows = order.unsqueeze(-1).expand(-1, -1, mid_keys.shape[-1])

        def splice(full: torch.Tensor, middle: torch.Tensor) -> torch.Tensor:
            return torch.cat([full[..., :lo], middle, full[..., hi:]], dim=-1)

        new_keys = torch.cat([view.keys[:, :, :lo], candidates.keys.gather(1, rows)[None], view.keys[:, :, hi:]], dim=2)
        new_values = torch.cat([view.values[:, :, :lo], candidates.values.gather(1, rows)[None], view.values[:, :, hi:]], dim=2)
        new_positions = splice(positions, candidates.positions.gather(1, order)).cpu()
        self.counts = splice(self.counts, counts)
        self.compressed = splice(self.compressed, compressed)
        self.scores = splice(self.scores, scores)
        self.mid_after_compression = width
        self.compressions += 1
        return SlotRewrite(new_keys, new_values, new_positions)

    def _fold_into_tier(self, keys, values, positions, scores, demoted: torch.Tensor, exact_budget: torch.Tensor) -> None:
        """Compress the ``demoted`` mid tokens ``(H, n)`` with the current tier (or drop them
        when the heads have no compressed budget)."""
        capacity = (self.config.mid_capacity - exact_budget).clamp(min=0)
        if int(capacity.max()) == 0:
            self.tier = None
            return
        if not bool(demoted.any()):
            return
        # undo the rotary rotation: compressors work on position-free keys
        unrotated = self.rotary.shift_keys(keys[None].float(), (-positions).cpu())[0]
        incoming = PointSet(unrotated, values.float(), demoted.float(), positions.double(), scores * demoted)
        points = incoming if self.tier is None else _as_float(self.tier).cat(incoming)
        tier = self.compressor.compress(points, capacity)
        # the budget must hold whatever a compressor returns: at most capacity[h] real slots per head
        real = tier.counts > 0
        tier = pad_to_common_size(tier, real & (real.cumsum(dim=-1) <= capacity[:, None]))
        tier.keys, tier.values = tier.keys.to(keys.dtype), tier.values.to(values.dtype)
        self.tier = tier

    # -- accounting -------------------------------------------------------------------------
    def layer_stats(self, seen: int) -> dict[str, float]:
        heads = self.counts.shape[0]
        mid = slice(self.sink, max(self.sink, self.counts.shape[1] - self.recent))
        exact = ((self.counts[:, mid] > 0) & ~self.compressed[:, mid]).sum().item() / heads
        compressed = ((self.counts > 0) & self.compressed).sum().item() / heads
        represented = self.counts.sum().item() / heads
        return {"exact": exact, "compressed": compressed, "dropped": seen - represented, "slots": self.counts.shape[1]}

    def stats(self) -> dict[str, float]:
        if self.counts is None or self.layer is None:
            return {}
        layer_stats = self.layer_stats(self.layer.seen_tokens)
        heads = self.counts.shape[0]
        materialized = self.layer.keys.numel() * self.layer.keys.element_size() * 2
        return {
            "adms_exact_slots": layer_stats["exact"] * heads,
            "adms_compressed_slots": layer_stats["compressed"] * heads,
            "adms_dropped_tokens": layer_stats["dropped"] * heads,
            "adms_compressions": self.compressions,
            "adms_materialized_bytes": materialized,
        }

    def stored_bytes(self) -> int | None:
        if self.counts is None or self.layer is None:
            return None
        keys = self.layer.keys
        plain = (self.counts > 0) & ~self.compressed
        row = 2 * keys.shape[-1] * keys.element_size()
        tier = 0 if self.tier is None else self.compressor.stored_bytes(self.tier)
        return int(plain.sum()) * row + tier

    def state_bytes(self) -> int:
        return 0 if self.scores is None else self.scores.numel() * _SCORE_BYTES


@dataclass
class _Candidates:
    """Rows ``(H, n, ...)`` that may make up the new mid tier, with their per-slot state;
    ``take`` marks the rows that stay (kept exact tokens, the tier's real slots)."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    take: torch.Tensor
    counts: torch.Tensor
    compressed: torch.Tensor
    scores: torch.Tensor

    def cat(self, other: "_Candidates") -> "_Candidates":
        return _Candidates(*(torch.cat([mine, theirs], dim=1) for mine, theirs in
                             ((getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__)))


def _as_float(points: PointSet) -> PointSet:
    return PointSet(points.keys.float(), points.values.float(), points.counts, points.positions, points.scores)
