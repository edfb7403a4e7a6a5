"""Every policy with small parameters for the tiny test models, simplest first.

Tests that run "every policy" parametrise over this table, and ``test_table_covers_every_policy``
fails when a registered policy has no row: adding a policy = its file, its registry line and its
rows here.
"""

from __future__ import annotations

import pytest

#: (policy, params) rows; a policy may have several (ADMS: one per kind of compressed slot).
POLICY_ROWS = [
    ("full", {}),
    ("sliding_window", dict(window_size=16)),
    ("streaming", dict(start_size=4, recent_size=12)),
    ("h2o", dict(heavy_size=8, recent_size=8)),
    ("tova", dict(cache_size=16)),
    ("snapkv", dict(cache_size=16, window_size=4, reselect_interval=4)),
    ("dynamickv", dict(cache_size=16, window_size=4, reselect_interval=4)),
    ("rocketkv", dict(storage_size=16, topk=8, window_size=4, reselect_interval=4, kernel_size=5)),
    ("atskv", dict(cache_size=16, start_size=2, recent_size=4, predictor="prior")),
    ("adms", dict(start_size=2, recent_size=8, compressed_budget=12, enable_dynamic_sink=False, rank=4)),
    ("adms", dict(start_size=2, recent_size=8, compressed_budget=8, enable_dynamic_sink=False, rank=4,
                  compression_interval=3)),
    ("adms", dict(start_size=2, recent_size=8, compressed_budget=8, enable_dynamic_sink=False, compressor_type="vq",
                  num_clusters=3, importance_metric="attention")),
]


def first_row(policy: str) -> dict:
    """The first (simplest) parameters of ``policy`` in the table."""
    return next(dict(params) for name, params in POLICY_ROWS if name == policy)


def rows(predicate=lambda policy: True) -> list:
    """The table's rows as pytest params with readable ids (``adms-1`` for a second ADMS row)."""
    seen: dict[str, int] = {}
    out = []
    for policy, params in POLICY_ROWS:
        if predicate(policy):
            index = seen[policy] = seen.get(policy, -1) + 1
            out.append(pytest.param(policy, dict(params), id=policy if index == 0 else f"{policy}-{index}"))
    return out
