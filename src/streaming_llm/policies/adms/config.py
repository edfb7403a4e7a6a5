"""ADMS's parameters (seed 000) and the ADM++ switches (seed 001), with the budgets they imply."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from ...checks import check_fraction
from ..base import LayerPolicy, PolicyConfig, check_int
from ..streaming import dynamic_sink_size
from . import memory_model


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0.0:
        raise ValueError(f"{name} must be a number >= 0; got {value!r}")


@dataclass
class ADMSConfig(PolicyConfig):
    """Parameters (names and defaults of seed 000's tables and seed 001's quick start)
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
    importance_ratio: share of the mid budget kept as exact tokens (the precision bank), in [0, 1].
    importance_metric: ``value_norm`` | ``key_norm`` | ``mixed`` | ``attention`` (accumulated
        attention received, through the attention hook).
    min_importance_tokens: floor on the exact share (>= 0).
    use_adaptive_budget: per-head exact share from the variance of the head's values.
    coverage_segments: timeline spans for coverage (>= 1).
    coverage_priority: share of each selection spread over the spans, in [0, 1].
    anchor_mode: ``grid`` | ``mean`` | ``hybrid`` (see :mod:`.anchors`).
    log_every: log the ``[ADMS ...]`` lines every this many tokens (0 = never).

    ADM++ (seed 001; every switch off by default, so seed 000's ADMS is unchanged):

    enable_dual_fidelity: a sketch bank of ``sketch_budget`` slots per head summarises what the
        mid tier drops; a sketch whose energy beats the precision bank's weakest token is promoted.
    sketch_budget: sketch slots per KV head (>= 0).
    sketch_reduction: ``mean`` (one averaged token) | ``sum`` (averaged, weighing as its members
        together: ``log(count)`` logit bias) | ``first`` (its earliest member stands for it).
    enable_residual_replay: when a compression captures less than ``energy_replay_threshold`` of
        the variance, its tokens with the largest residuals are kept exactly instead.
    replay_budget: replayed tokens per KV head (>= 0).
    energy_replay_threshold: variance captured below which replay triggers, in [0, 1].
    enable_position_calibration: fit compressed slots' anchors to the last ``calibration_window``
        queries (regularised least squares on the logits; needs the attention hook).
    calibration_window: queries kept for calibration (>= 1); they are resident and counted.
    calibration_regularization: damping of the least-squares step (>= 0).
    enable_adaptive_controller: per-group compressed budgets follow an EMA of captured energy.
    controller_gain: EMA weight of the newest energy, in [0, 1].
    controller_energy_floor / controller_energy_ceiling: a group below the floor gains budget,
        above the ceiling it gives budget back; 0 <= floor <= ceiling <= 1.
    controller_group_size: KV heads per controller group (>= 1).
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
    enable_dual_fidelity: bool = False
    sketch_budget: int = 32
    sketch_reduction: Literal["mean", "sum", "first"] = "mean"
    enable_residual_replay: bool = False
    replay_budget: int = 16
    energy_replay_threshold: float = 0.88
    enable_position_calibration: bool = False
    calibration_window: int = 512
    calibration_regularization: float = 0.1
    enable_adaptive_controller: bool = False
    controller_gain: float = 0.35
    controller_energy_floor: float = 0.8
    controller_energy_ceiling: float = 0.97
    controller_group_size: int = 2

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
        for name in ("rank", "num_clusters", "compression_interval", "svd_max_tokens", "coverage_segments",
                     "calibration_window", "controller_group_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("min_importance_tokens", "log_every", "sketch_budget", "replay_budget"):
            check_int(name, getattr(self, name), 0)
        for name in ("importance_ratio", "coverage_priority", "energy_replay_threshold", "controller_gain",
                     "controller_energy_floor", "controller_energy_ceiling"):
            check_fraction(name, getattr(self, name))
        _check_positive("calibration_regularization", self.calibration_regularization)
        if self.controller_energy_floor > self.controller_energy_ceiling:
            raise ValueError(
                f"controller_energy_floor must be <= controller_energy_ceiling; got {self.controller_energy_floor!r} > "
                f"{self.controller_energy_ceiling!r}"
            )

    # -- derived budgets (per layer and KV head, in slots) ---------------------------------
    @property
    def sink_size(self) -> int:
        return dynamic_sink_size(self.start_size, self.max_seq_length) if self.enable_dynamic_sink else self.start_size

    @property
    def pending_headroom(self) -> int:
        """Mid slots reserved for tokens evicted between two compressions."""
        return min(self.compression_interval - 1, self.compressed_budget // 4)

    @property
    def mid_capacity(self) -> int:
        """Precision-bank + compressed slots right after a compression."""
        return self.compressed_budget - self.pending_headroom

    @property
    def exact_budget(self) -> int:
        """Precision-bank slots (exact tokens, and promoted sketches)."""
        wanted = max(self.min_importance_tokens, round(self.importance_ratio * self.mid_capacity))
        return min(self.mid_capacity, wanted)

    @property
    def compressed_capacity(self) -> int:
        return self.mid_capacity - self.exact_budget

    @property
    def sketch_slots(self) -> int:
        return self.sketch_budget if self.enable_dual_fidelity else 0

    @property
    def replay_slots(self) -> int:
        return self.replay_budget if self.enable_residual_replay and self.compressed_capacity else 0

    @property
    def controller_headroom(self) -> int:
        """Extra compressed slots a head may gain from the controller. Dense storage pads every head
        to the widest, so this headroom is resident memory and is counted."""
        return self.compressed_capacity // 2 if self.enable_adaptive_controller else 0

    @property
    def calibrates(self) -> bool:
        return self.enable_position_calibration and self.compressed_capacity > 0

    @property
    def exact_only(self) -> bool:
        """No compressed share, the same exact budget in every head, no sketches: selection alone
        (sinks plus H2O-like top-k, :mod:`.exact_only`)."""
        return not self.use_adaptive_budget and self.compressed_capacity == 0 and not self.sketch_slots

    @property
    def max_slots(self) -> int:
        return (self.sink_size + self.compressed_budget + self.controller_headroom + self.sketch_slots
                + self.replay_slots + self.recent_size)

    # -- equal memory (resident bytes, see memory_model) -----------------------------------
    def state_bytes_per_slot(self, num_kv_heads: int) -> int:
        return num_kv_heads * memory_model.state_bytes_per_head_slot(self.exact_only)

    def layer_bytes(self, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
        """Most resident bytes one layer's cache holds (every configuration)."""
        return memory_model.layer_bytes(self, num_kv_heads, head_dim, element_bytes)

    def sized_to_bytes(self, geometry, layer_bytes: int) -> "ADMSConfig":
        """The recent window that fills ``layer_bytes`` per layer, sinks and mid budgets fixed."""
        return memory_model.sized_to_bytes(self, geometry, layer_bytes)

    def max_cache_bytes(self, geometry) -> int:
        return geometry.num_layers * self.layer_bytes(geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)

    def sized(self, slots: int) -> "ADMSConfig":
        recent = slots - (self.max_slots - self.recent_size)
        if recent < 1:
            raise ValueError(
                f"{slots} slots per layer (after the calibration window) leave no recent window after "
                f"{self.sink_size} sinks, a mid budget of {self.compressed_budget} and "
                f"{self.max_slots - self.recent_size - self.sink_size - self.compressed_budget} ADM++ slots; lower "
                "compressed_budget, sketch_budget, replay_budget or calibration_window, or raise cache_bytes"
            )
        return replace(self, recent_size=recent)

    def cache_class(self) -> type:
        from .cache import ADMSKVCache

        return ADMSKVCache

    def build_layer_policies(self, num_layers: int) -> list[LayerPolicy]:
        from .exact_only import ExactOnlyADMS
        from .monitor import ADMSMonitor
        from .tiers import ADMSLayer

        monitor = ADMSMonitor(self)
        layer_class = ExactOnlyADMS if self.exact_only else ADMSLayer
        monitor.layers = [layer_class(self, monitor) for _ in range(num_layers)]
        return list(monitor.layers)
