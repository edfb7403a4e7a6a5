"""ADM++ (seed 001) on ADMS: each mechanism shown to act — promotions, residual replay, position
calibration, the budget controller — plus resident bytes under the budget for every configuration."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, tiny_model
from test_adms import adms_params
from streaming_llm import enable_adms_llm, make_cache
from streaming_llm.adms_cache import ADMSConfig
from streaming_llm.compat import cache_kwargs
from streaming_llm.compressors import PointSet, low_rank_approximation
from streaming_llm.policies.adms import (
    ADMSLayer, ADMSMonitor, BudgetController, calibrate_anchors, calibration_error, member_logits,
)
from streaming_llm.policies.adms.replay import variance_captured
from streaming_llm.policies.adms.tiers import COMPRESSED, EXACT, PROMOTED, REPLAY, SKETCH
from streaming_llm.policies.base import SlotView
from streaming_llm.positions import PositionFreeKeys, RotateHalfRoPE
from streaming_llm.sizing import KVGeometry

MODEL = tiny_model("llama")
HEADS, DIM = 2, 16

SEED_001 = dict(  # the quick start's full configuration
    enable_dual_fidelity=True, sketch_budget=32, sketch_reduction="mean", importance_ratio=0.5,
    enable_residual_replay=True, replay_budget=16, energy_replay_threshold=0.88,
    enable_position_calibration=True, calibration_window=512, calibration_regularization=0.1,
    enable_adaptive_controller=True, controller_gain=0.35, controller_energy_floor=0.8,
    controller_energy_ceiling=0.97, controller_group_size=2, compressor_type="low_rank", rank=16,
)


def _layer(**params) -> ADMSLayer:
    config = ADMSConfig(enable_dynamic_sink=False, start_size=0, recent_size=1, compression_interval=1,
                        coverage_priority=0.0, min_importance_tokens=0, **params)
    monitor = ADMSMonitor(config)
    layer = ADMSLayer(config, monitor)
    monitor.layers = [layer]
    layer.bind_rotary(PositionFreeKeys())
    return layer


def _view(keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, seen: int) -> SlotView:
    return SlotView(positions, seen, 1, keys[None], values[None])


def _set_state(layer, counts, kind, scores, positions):
    layer.counts = torch.tensor(counts, dtype=torch.float32).expand(HEADS, -1).clone()
    layer.kind = torch.tensor(kind, dtype=torch.int8).expand(HEADS, -1).clone()
    layer.scores = torch.tensor(scores, dtype=torch.float32).expand(HEADS, -1).clone()
    layer.centers = torch.tensor(positions, dtype=torch.float64).expand(HEADS, -1).clone()


@pytest.mark.parametrize("sketch_energy,promoted", [(3.0, True), (0.5, False)])
def test_a_sketch_is_promoted_exactly_when_its_energy_beats_the_precision_banks_minimum(sketch_energy, promoted):
    """Precision bank of 2 (scores 1 and 2) and a 2-token sketch; a new token (score 1.5) arrives.
    The sketch enters the bank iff its energy per token beats the bank's weakest token."""
    layer = _layer(compressed_budget=2, importance_ratio=1.0, enable_dual_fidelity=True, sketch_budget=1)
    torch.manual_seed(0)
    keys, values = torch.randn(HEADS, 5, DIM), torch.randn(HEADS, 5, DIM)
    positions = torch.tensor([0, 1, 3, 4, 5]).expand(HEADS, 5)
    # mid: exact(score 1) exact(2) sketch(2 tokens, energy e) exact(1.5, pending); recent: the new token
    _set_state(layer, [1, 1, 2, 1], [EXACT, EXACT, SKETCH, EXACT], [1.0, 2.0, 2 * sketch_energy, 1.5], [0, 1, 2.5, 4])
    values[:, 4] = 0  # the new token's value_norm score: 0 (it is in the recent window anyway)
    rewrite = layer.select(_view(keys, values, positions, seen=6))
    assert rewrite is not None
    kinds = layer.kind[0, :-1].tolist()
    assert layer.counters["promotions"] == (HEADS if promoted else 0)
    if promoted:
        # the bank holds the sketch and the score-2 token; the demoted tokens became a sketch
        assert sorted(kinds) == sorted([EXACT, PROMOTED, SKETCH])
        assert layer.scores[0, :-1].tolist().count(2.0) == 1
    else:
        assert sorted(kinds) == sorted([EXACT, EXACT, SKETCH])
        assert 2 * sketch_energy < layer.scores[0, kinds.index(SKETCH)]  # score-1 token folded into the sketch


def _replay_layer(threshold: float) -> ADMSLayer:
    return _layer(compressed_budget=10, importance_ratio=0.0, rank=1, svd_max_tokens=64, coverage_segments=1,
                  enable_residual_replay=True, replay_budget=2, energy_replay_threshold=threshold)


def _replay_view(rank_one: bool, n: int = 11):
    torch.manual_seed(1)
    if rank_one:
        keys = torch.randn(HEADS, n, 1) * torch.randn(HEADS, 1, DIM)
        values = torch.randn(HEADS, n, 1) * torch.randn(HEADS, 1, DIM)
    else:
        keys, values = torch.randn(HEADS, n, DIM), torch.randn(HEADS, n, DIM)
    return keys, values, torch.arange(n).expand(HEADS, n)


@pytest.mark.parametrize("threshold", [0.5, 0.99])
def test_replay_triggers_below_the_threshold_and_replays_the_largest_residuals(threshold):
    """Rank 1 of random 16-dim tokens keeps far less than half of the variance: replay triggers
    and keeps exactly the two tokens the rank-1 basis reconstructs worst."""
    layer = _replay_layer(threshold)
    keys, values, positions = _replay_view(rank_one=False)
    mid = keys.shape[1] - 1
    _set_state(layer, [1] * mid, [EXACT] * mid, [1.0] * mid, list(range(mid)))
    layer.select(_view(keys, values, positions, seen=keys.shape[1]))
    assert layer.counters["replay_triggers"] == HEADS and layer.counters["replay_tokens"] == 2 * HEADS
    kind = layer.kind[:, :-1]
    assert int((kind == REPLAY).sum()) == 2 * HEADS
    # the replayed tokens are the largest residuals of the rank-1 fit (keys and values, normalised)
    mid_keys, mid_values = keys[:, :mid], values[:, :mid]
    residual = 0
    for data in (mid_keys, mid_values):
        error = (low_rank_approximation(data, 1, 64)[0] - data).pow(2).sum(-1)
        residual = residual + error / (data - data.mean(1, keepdim=True)).pow(2).sum((1, 2))[:, None]
    expected = residual.topk(2, dim=1).indices.sort(dim=1).values
    replayed = torch.stack([layer.centers[h, :-1][kind[h] == REPLAY] for h in range(HEADS)]).long()
    assert torch.equal(replayed, expected)


def test_replay_does_not_trigger_when_the_compression_keeps_the_energy():
    """Rank-1 tokens are reconstructed exactly by rank 1: all the variance is kept, no replay even at 0.99."""
    layer = _replay_layer(0.99)
    keys, values, positions = _replay_view(rank_one=True)
    mid = keys.shape[1] - 1
    _set_state(layer, [1] * mid, [EXACT] * mid, [1.0] * mid, list(range(mid)))
    layer.select(_view(keys, values, positions, seen=keys.shape[1]))
    assert layer.counters["replay_triggers"] == 0 and layer.counters["replay_tokens"] == 0
    assert int((layer.kind == COMPRESSED).sum()) == mid * HEADS


def test_variance_captured_is_one_minus_the_residual_share():
    torch.manual_seed(2)
    data = torch.randn(1, 40, 8)
    points = PointSet(data, data.clone(), torch.ones(1, 40), torch.arange(40.0, dtype=torch.float64)[None], torch.ones(1, 40))
    approx, _ = low_rank_approximation(data, 3, 64)
    tier = PointSet(approx, approx.clone(), torch.ones(1, 40), points.positions, points.scores)
    energy, residual, active = variance_captured(points, tier, torch.arange(40)[None])
    centred = (data - data.mean(1, keepdim=True)).pow(2).sum()
    assert active.all()
    assert energy.item() == pytest.approx(1 - ((data - approx).pow(2).sum() / centred).item(), rel=1e-4)
    assert residual.sum().item() == pytest.approx(2 * (1 - energy.item()), rel=1e-4)


def test_calibration_lowers_the_logit_error_on_held_out_queries():
    """Merged slots at their members' mean position, against the same slots at fitted anchors:
    the fit on 48 queries lowers the logit error on 48 other queries of the same stream."""
    torch.manual_seed(3)
    dim = 32
    rotary = RotateHalfRoPE(1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))
    heads, slots, members = 2, 6, 6
    n = slots * members
    member_positions = (torch.arange(n) * 5 + 10).expand(heads, n)  # members of a slot span 30 positions
    base = torch.randn(heads, slots, dim).repeat_interleave(members, dim=1)
    free = base + 0.3 * torch.randn(heads, n, dim)
    rows = rotary.shift_keys(free[None], member_positions)[0]
    assignment = (torch.arange(n) // members).expand(heads, n)
    merged = free.reshape(heads, slots, members, dim).mean(2)
    anchors = member_positions.reshape(heads, slots, members).double().mean(-1).round().long()
    query_positions = torch.arange(300, 396)
    queries = rotary.shift_keys(torch.randn(1, heads, 96, dim) + 0.5 * merged.mean(1)[None, :, None], query_positions.expand(heads, 96))[0]
    fit, held = queries[:, ::2], queries[:, 1::2]
    bias = torch.full((heads, slots), float(members)).log()
    scale = dim ** -0.5
    target_fit = member_logits(fit, rows, torch.zeros(heads, n), assignment, slots, scale)
    target_held = member_logits(held, rows, torch.zeros(heads, n), assignment, slots, scale)
    errors = {}
    for name, start in (("mean", anchors), ("grid-like, 40 late", anchors + 40)):
        fitted = calibrate_anchors(fit, merged, bias, start, target_fit, rotary, scale, 0.1, 0, 300)
        assert not torch.equal(fitted, start)
        before = calibration_error(held, merged, bias, start, target_held, rotary, scale).mean()
        after = calibration_error(held, merged, bias, fitted, target_held, rotary, scale).mean()
        errors[name] = (before.item(), after.item())
    assert errors["mean"][1] < errors["mean"][0]
    assert errors["grid-like, 40 late"][1] < 0.5 * errors["grid-like, 40 late"][0]


def test_controller_moves_budget_toward_low_energy_groups_within_the_cap():
    controller = BudgetController(base=16, headroom=8, heads=4, group_size=2, gain=0.5, floor=0.8, ceiling=0.97)
    energy = torch.tensor([0.5, 0.5, 0.9, 0.9])  # group 0 compresses badly, group 1 in the band
    for _ in range(5):
        controller.update(energy, torch.ones(4, dtype=torch.bool))
        assert controller.total() <= controller.cap
    budgets = controller.per_head().tolist()
    assert budgets[0] == budgets[1] > 16 > budgets[2] == budgets[3]
    assert controller.total() == controller.cap and controller.adjustments > 0
    # a group above the ceiling gives budget back even with nobody asking
    for _ in range(4):  # the EMA climbs over the ceiling
        controller.update(torch.tensor([0.9, 0.9, 1.0, 1.0]), torch.ones(4, dtype=torch.bool))
    assert controller.per_head()[2] < budgets[2]


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.lists(st.floats(0, 1), min_size=5, max_size=5), min_size=1, max_size=12),
       base=st.integers(0, 20), group=st.integers(1, 5), gain=st.floats(0, 1))
def test_controller_never_exceeds_the_cap(steps, base, group, gain):
    controller = BudgetController(base, base // 2, 5, group, gain, 0.8, 0.97)
    for energy in steps:
        controller.update(torch.tensor(energy), torch.ones(5, dtype=torch.bool))
        assert controller.total() <= controller.cap
        assert ((controller.per_head() >= 0) & (controller.per_head() <= base + base // 2)).all()


# seed 000's parameters as test_adms draws them, plus every ADM++ switch and budget
adm_plus_params = st.tuples(adms_params, st.fixed_dictionaries({
    "enable_dual_fidelity": st.booleans(),
    "sketch_budget": st.integers(0, 5),
    "sketch_reduction": st.sampled_from(["mean", "sum", "first"]),
    "enable_residual_replay": st.booleans(),
    "replay_budget": st.integers(0, 4),
    "energy_replay_threshold": st.floats(0, 1),
    "enable_position_calibration": st.booleans(),
    "calibration_window": st.integers(1, 12),
    "enable_adaptive_controller": st.booleans(),
    "controller_group_size": st.integers(1, 3),
})).map(lambda both: {**both[0], **both[1]})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=adm_plus_params, chunk=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_resident_bytes_never_exceed_the_budget(params, chunk, seed):
    """Whatever the configuration: slots within max_slots, resident bytes (every K/V row held,
    empty padding included, positions, state, calibration window) within the byte model's bound."""
    ids = torch.randint(0, TINY["vocab_size"], (1, 70), generator=torch.Generator().manual_seed(seed))
    cache = make_cache(MODEL, "adms", enable_dynamic_sink=False, **params)
    config = cache.config
    geometry = KVGeometry.of(MODEL)
    bound = config.layer_bytes(geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)
    with torch.no_grad(), cache:
        for start in range(0, ids.shape[1], chunk):
            logits = MODEL(input_ids=ids[:, start:start + chunk], **cache_kwargs(MODEL, cache), use_cache=True).logits
            assert torch.isfinite(logits).all()
            for layer in cache.layers:
                held = 2 * layer.keys.numel() * layer.keys.element_size()
                assert layer.num_slots <= config.max_slots
                assert held <= layer.cache_bytes() <= bound


@pytest.mark.parametrize("name,value", [
    ("sketch_budget", -1), ("sketch_reduction", "median"), ("replay_budget", 1.5), ("energy_replay_threshold", 1.2),
    ("calibration_window", 0), ("calibration_regularization", -0.1), ("controller_gain", 2.0),
    ("controller_energy_floor", -0.5), ("controller_group_size", 0), ("enable_dual_fidelity", "maybe"),
])
def test_invalid_values_name_the_parameter(name, value):
    with pytest.raises(ValueError, match=name):
        make_cache(MODEL, "adms", **{name: value})
    with pytest.raises(ValueError, match="controller_energy_floor"):
        ADMSConfig(controller_energy_floor=0.9, controller_energy_ceiling=0.8)


def test_seed_quick_start_runs_and_logs_every_stats_line(token_stream, caplog):
    """Seed 001's full configuration (smaller budgets for the tiny model): every mechanism acts and
    the seed's lines reach the streaming_llm.adms logger; cache.stats carries the counters."""
    params = {**SEED_001, "sketch_budget": 4, "replay_budget": 3, "calibration_window": 16, "rank": 2,
              "energy_replay_threshold": 0.95, "controller_group_size": 1,
              # rank 2 of 16 dims keeps little energy in every head: with the seed's floor every group
              # would ask for budget and none could give; a ceiling of 0.1 makes groups give it back
              "controller_energy_floor": 0.05, "controller_energy_ceiling": 0.1}
    cache = enable_adms_llm(MODEL, start_size=2, recent_size=8, compressed_budget=24, enable_dynamic_sink=False,
                            log_every=50, **params)
    with caplog.at_level(logging.INFO, logger="streaming_llm.adms"), cache, torch.no_grad():
        for start in range(0, 150, 3):
            MODEL(input_ids=token_stream[:, start:start + 3], **cache_kwargs(MODEL, cache), use_cache=True)
    lines = [r.getMessage() for r in caplog.records]
    for prefix in ("[ADMS Stats @ 150]", "[ADMS Dual-Fidelity @ 150] Sketches: ", "[ADMS Replay @ 150] Triggers: ",
                   "[ADMS Calibration @ 150] Total calibrations: ", "[ADMS Controller @ 150] Budget adjustments: ",
                   "[ADMS Cache @ 150] Actual size: "):
        assert any(line.startswith(prefix) for line in lines), prefix
    stats = cache.stats
    assert stats["adms_sketches"] > 0 and stats["adms_replay_tokens"] > 0 and stats["adms_calibrations"] > 0
    assert stats["adms_budget_adjustments"] > 0
    assert f"Expected max: {cache.config.max_slots}," in next(line for line in lines if line.startswith("[ADMS Cache @ 150]"))
    assert not any("WARNING" in line for line in lines)


def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "eval_adms_vs_streaming.py"
    spec = importlib.util.spec_from_file_location("eval_adms_vs_streaming_plus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_runs_full_adm_plus_by_default_and_takes_seed_001_flags():
    script = _script()
    config = script.jobs_from_args(script.build_parser().parse_args([]))[1].spec.config()
    assert (config.enable_dual_fidelity, config.enable_residual_replay, config.enable_position_calibration,
            config.enable_adaptive_controller) == (True, True, True, True)
    assert (config.sketch_budget, config.replay_budget, config.energy_replay_threshold) == (32, 16, 0.88)
    args = script.build_parser().parse_args([
        "--disable_dual_fidelity", "--disable_residual_replay", "--disable_position_calibration",
        "--disable_adaptive_controller", "--sketch_budget", "64", "--replay_budget", "0",
        "--energy_replay_threshold", "0.85"])
    config = script.jobs_from_args(args)[1].spec.config()
    assert (config.enable_dual_fidelity, config.enable_residual_replay, config.enable_position_calibration,
            config.enable_adaptive_controller) == (False, False, False, False)
    assert (config.sketch_budget, config.replay_budget, config.energy_replay_threshold) == (64, 0, 0.85)
