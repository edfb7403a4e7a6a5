"""The layers of one ADMS cache, and the seed's log lines (seeds 001/004) every ``log_every`` tokens::

    [ADMS Stats @ N] Avg per head: exact=..., compressed=..., dropped=...
    [ADMS Dual-Fidelity @ N] Sketches: ..., Promotions: ...        (enable_dual_fidelity)
    [ADMS Replay @ N] Triggers: ..., Tokens: ...                   (enable_residual_replay)
    [ADMS Calibration @ N] Total calibrations: ...                 (enable_position_calibration)
    [ADMS Controller @ N] Budget adjustments: ...                  (enable_adaptive_controller)
    [ADMS Cache @ N] Actual size: ..., Expected max: ..., Ratio: ...%

Counts are summed over layers and KV heads: sketches held now; promotions, replay triggers (a head's
compression that kept less energy than the threshold), replayed tokens, calibrations (a layer's
compression whose anchors were fitted) and budget adjustments (a group's budget changed) since
the start. The cache size is the largest layer's slot count; the expected max is ``max_slots``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("streaming_llm.adms")

#: (config switch, line, [(label, counter)]) of the ADM++ lines
FEATURE_LINES = (
    ("enable_dual_fidelity", "Dual-Fidelity", (("Sketches", "adms_sketches"), ("Promotions", "adms_promotions"))),
    ("enable_residual_replay", "Replay", (("Triggers", "adms_replay_triggers"), ("Tokens", "adms_replay_tokens"))),
    ("enable_position_calibration", "Calibration", (("Total calibrations", "adms_calibrations"),)),
    ("enable_adaptive_controller", "Controller", (("Budget adjustments", "adms_budget_adjustments"),)),
)


class ADMSMonitor:
    def __init__(self, config):
        self.config = config
        self.log_every = config.log_every
        self.expected_max = config.max_slots
        self.layers: list = []
        self.last_logged = 0
        self.exceeded = 0  # steps after which some layer held more than expected_max

    def after_step(self, layer, seen: int, slots: int) -> None:
        """Called by every layer after its step with its slot count; the last layer logs when a
        multiple of ``log_every`` was crossed."""
        if slots > self.expected_max:
            self.exceeded += 1
            logger.warning("[ADMS WARNING] Cache size %d exceeds expected max %d at %d tokens", slots, self.expected_max, seen)
        if not self.log_every or layer is not self.layers[-1] or seen // self.log_every <= self.last_logged // self.log_every:
            return
        self.last_logged = seen
        self.log(seen)

    def log(self, seen: int) -> None:
        layers = [member for member in self.layers if member.layer is not None and member.layer.is_initialized]
        stats = [member.layer_stats(seen) for member in layers]

        def mean(key):
            return sum(s[key] for s in stats) / len(stats)

        logger.info(
            "[ADMS Stats @ %d] Avg per head: exact=%.1f, compressed=%.1f, dropped=%.1f",
            seen, mean("exact"), mean("compressed"), mean("dropped"),
        )
        totals: dict[str, float] = {}
        for member in layers:
            for key, value in member.stats().items():
                totals[key] = totals.get(key, 0) + value
        for switch, title, fields in FEATURE_LINES:
            if getattr(self.config, switch):
                body = ", ".join(f"{label}: {int(totals.get(counter, 0))}" for label, counter in fields)
                logger.info("[ADMS %s @ %d] %s", title, seen, body)
        actual = int(max(s["slots"] for s in stats))
        logger.info(
            "[ADMS Cache @ %d] Actual size: %d, Expected max: %d, Ratio: %.2f%%",
            seen, actual, self.expected_max, 100.0 * actual / max(seen, 1),
        )
