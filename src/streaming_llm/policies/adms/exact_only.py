"""Exact-only ADMS (``importance_ratio`` giving the whole mid budget to exact tokens): H2O plus sinks.

With no compressed share ADMS only selects: sinks, the ``E`` best-scored mid tokens and the recent
window. With ``importance_metric="attention"`` the score is H2O's accumulated attention
(:class:`~streaming_llm.policies.h2o.HeavyHitters`, whose ``update_scores`` this inherits); the
differences from H2O are the protected sinks, the coverage share of the selection
(:func:`~streaming_llm.selection.coverage_ranking`) and eviction in batches: tokens leaving the
recent window wait in ``pending_headroom`` slots until the next selection, so the budget
``sink + compressed_budget + recent`` holds after every update while top-k runs every
``compression_interval`` evicted tokens.
"""

from __future__ import annotations

import torch

from ...selection import coverage_ranking
from ..base import SlotView
from ..h2o import HeavyHitters
from .importance import TokenScorer
from .tiers import build_compressor


class ExactOnlyADMS(HeavyHitters):
    """Sinks + top-``E`` mid tokens + recent window, per KV head; state: one float32 score per slot."""

    def __init__(self, config, monitor):
        super().__init__(config.max_slots, protected_recent=config.recent_size)
        self.config = config
        self.monitor = monitor
        self.sink, self.recent = config.sink_size, config.recent_size
        self.needs_attention = config.importance_metric == "attention"
        self.scorer = TokenScorer(config.importance_metric)
        self.compressor = build_compressor(config)  # never used: kept for ADMSKVCache.compressors
        self.layer = None
        self.mid_after_compression = 0
        self.compressions = 0

    exact_only = True

    def attach(self, layer) -> None:
        self.layer = layer

    def set_head_compressors(self, per_head: list) -> None:
        from ...compressors import CustomCompressor

        self.compressor = CustomCompressor(per_head)

    def select(self, view: SlotView):
        q = view.new_tokens
        new = self.scorer(view.keys[0, :, -q:], view.values[0, :, -q:])
        scores = new if self.scores is None else torch.cat([self.scores, new], dim=1)
        return self.evict(scores, view)

    def evict(self, scores: torch.Tensor, view: SlotView):
        keep = super().evict(scores, view)
        self.monitor.after_step(self, view.seen_tokens, view.num_slots if keep is None else keep.shape[-1])
        return keep

    def over_budget(self, view: SlotView) -> bool:
        mid = view.num_slots - self.sink - self.recent
        if mid <= 0:
            return False
        # pending tokens may only use their reserved headroom, so the bound holds at every step
        return mid - self.mid_after_compression > self.config.pending_headroom or mid > self.config.compressed_budget

    def choose(self, scores: torch.Tensor, view: SlotView) -> torch.Tensor:
        """Sinks, the ``E`` best mid tokens by coverage ranking, the recent window: ``(H, T')``."""
        if self.compressor is None:
            raise ValueError(
                "compressor_type='custom' needs a compressor: enable_adms_llm(model, compressor=obj, ...) or "
                "cache.compressors = {(layer, head): obj, ...} with obj.compress(K, V) -> (K', V')"
            )
        total, device = view.num_slots, scores.device
        lo, hi = self.sink, total - self.recent
        ranking = coverage_ranking(
            scores[:, lo:hi], view.positions[:, lo:hi].to(device), self.config.exact_budget,
            self.config.coverage_segments, self.config.coverage_priority,
        )
        kept = min(self.config.exact_budget, hi - lo)
        chosen = ranking[:, :kept].sort(dim=-1).values + lo
        heads = chosen.shape[0]
        self.mid_after_compression = kept
        self.compressions += 1
        return torch.cat([
            torch.arange(lo, device=device).expand(heads, lo),
            chosen,
            torch.arange(hi, total, device=device).expand(heads, total - hi),
        ], dim=1)

    # -- accounting -------------------------------------------------------------------------
    def layer_stats(self, seen: int) -> dict[str, float]:
        slots = self.layer.num_slots
        mid = max(0, slots - self.sink - self.recent)
        return {"exact": float(mid), "compressed": 0.0, "dropped": float(seen - slots), "slots": slots}

    def stats(self) -> dict[str, float]:
        if self.layer is None or not self.layer.is_initialized:
            return {}
        heads = self.layer.keys.shape[1]
        layer_stats = self.layer_stats(self.layer.seen_tokens)
        return {
            "adms_exact_slots": layer_stats["exact"] * heads,
            "adms_compressed_slots": 0.0,
            "adms_dropped_tokens": layer_stats["dropped"] * heads,
            "adms_compressions": self.compressions,
            "adms_materialized_bytes": 2 * self.layer.keys.numel() * self.layer.keys.element_size(),
        }
