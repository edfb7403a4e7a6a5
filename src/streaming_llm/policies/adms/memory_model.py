"""ADMS's byte model: the resident bytes of one layer, for equal-memory comparisons.

Every slot of the layer is a materialised K/V row in a dense ``(1, H_kv, T, D)`` tensor: exact
tokens, compressed slots (a low-rank slot is its reconstruction ``A W^T``, kept full width so
attention reads it directly), sketches, replayed tokens, and the empty slots that pad heads with
fewer slots to the widest. So a slot costs a full row whatever it holds, plus its int64
position and the policy's per-slot state; the calibration window's queries come on top.
A low-rank tier stored as factors would cost ``r / D`` of a row, but only if attention read the
factors (``q (A W^T)^T = (q W) A^T``); this implementation does not, and counts what it holds.
"""

from __future__ import annotations

from ..base import POSITION_BYTES

#: per slot and KV head: float32 score (every ADMS layer)
SCORE_BYTES = 4
#: general layers add a float32 token count, an int8 slot kind and a float64 mean member position
TIER_STATE_BYTES = 4 + 1 + 8


def state_bytes_per_head_slot(exact_only: bool) -> int:
    return SCORE_BYTES if exact_only else SCORE_BYTES + TIER_STATE_BYTES


def slot_bytes(config, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
    """Resident bytes of one slot of one layer (all KV heads)."""
    row = 2 * head_dim * element_bytes + POSITION_BYTES + state_bytes_per_head_slot(config.exact_only)
    return num_kv_heads * row


def query_window_bytes(config, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
    """The calibration window: ``calibration_window`` queries per KV head (rotated at their positions)."""
    if not config.calibrates:
        return 0
    return config.calibration_window * num_kv_heads * head_dim * element_bytes


def layer_bytes(config, num_kv_heads: int, head_dim: int, element_bytes: int) -> int:
    return (config.max_slots * slot_bytes(config, num_kv_heads, head_dim, element_bytes)
            + query_window_bytes(config, num_kv_heads, head_dim, element_bytes))


def sized_to_bytes(config, geometry, budget: int):
    """``config`` with the recent window that fills ``budget`` bytes per layer."""
    args = (geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)
    return config.sized((budget - query_window_bytes(config, *args)) // slot_bytes(config, *args))
