"""``adms``: Adaptive Dual-Memory Streaming (seed 000) with the ADM++ switches (seed 001).

Per decoder layer and KV head the cache holds three tiers::

    [ sinks (exact) | mid: importance-selected exact tokens + compressed slots | recent (exact) ]

One job per module:

- :mod:`.config` — ``ADMSConfig``: the parameters, their validation and the budgets they imply;
- :mod:`.memory_model` — resident bytes per layer, for equal-memory sizing;
- :mod:`.importance` — token scores (``importance_metric``) and per-head exact budgets;
- :mod:`.exact_only` — ``importance_ratio`` = 1: sinks plus H2O's top-k (a scored-eviction policy);
- :mod:`.tiers` — the general layer: precision bank, compressed tier, rebuilt mid;
- :mod:`.anchors` — anchor positions of compressed slots and their calibration (ADM++);
- :mod:`.fidelity` — the sketch bank and promotions (ADM++ dual fidelity);
- :mod:`.replay` — energy captured by a compression and residual replay (ADM++);
- :mod:`.controller` — per-group compressed budgets driven by energy (ADM++);
- :mod:`.monitor` — the layers of one cache and the seed's ``[ADMS ...]`` log lines.

Budgets per layer and KV head, in slots, after every update whatever the interval (seed 004,
bug 1): ``sink + compressed_budget + recent_size``, plus with ADM++ the sketch bank
(``sketch_budget``), the replay slots (``replay_budget``) and the controller's headroom
(``compressed share // 2``). ``h = min(compression_interval - 1, compressed_budget // 4)`` mid
slots hold pending tokens between compressions; the other ``B' = compressed_budget - h`` are
split into ``E = max(min_importance_tokens, round(importance_ratio * B'))`` exact slots (at most
``B'``) and ``C = B' - E`` compressed slots.
"""

from .anchors import anchor_positions, calibrate_anchors, calibration_error, member_logits
from .config import ADMSConfig
from .controller import BudgetController
from .exact_only import ExactOnlyADMS
from .monitor import ADMSMonitor, logger
from .tiers import ADMSLayer, build_compressor

__all__ = [
    "ADMSConfig", "ADMSLayer", "ADMSMonitor", "BudgetController", "ExactOnlyADMS", "anchor_positions",
    "build_compressor", "calibrate_anchors", "calibration_error", "logger", "member_logits",
]
