"""ADMS: the budget after every update, compressors, importance selection, anchors, custom
compressors, logging and equal-memory sizing (tiny random Llama)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, tiny_model
from streaming_llm import enable_adms_llm, enable_streaming_llm, make_cache
from streaming_llm.adms_cache import ADMSConfig, ADMSKVCache
from streaming_llm.compressors import PointSet, SummaryCompressor, VQCompressor, kmeans_assignment, low_rank_approximation
from streaming_llm.compressors.base import weighted_means
from streaming_llm.policies.adms import ADMSLayer, ExactOnlyADMS, anchor_positions
from streaming_llm.selection import coverage_ranking
from streaming_llm.sizing import KVGeometry, size_to_bytes
from streaming_llm.compat import cache_kwargs, returned_cache

MODEL = tiny_model("llama")
HEAD_DIM = TINY["hidden_size"] // TINY["num_attention_heads"]


def stream(ids: torch.Tensor, cache, chunk: int = 1, after_update=None):
    with torch.no_grad():
        for start in range(0, ids.shape[1], chunk):
            logits = MODEL(input_ids=ids[:, start:start + chunk], **cache_kwargs(MODEL, cache), use_cache=True).logits
            if after_update is not None:
                after_update(cache, logits)


adms_params = st.fixed_dictionaries({
    "start_size": st.integers(0, 4),
    "recent_size": st.integers(1, 12),
    "compressed_budget": st.integers(0, 20),
    "compressor_type": st.sampled_from(["low_rank", "vq", "summary"]),
    "rank": st.integers(1, 20),
    "num_clusters": st.integers(1, 8),
    "compression_interval": st.integers(1, 12),
    "svd_max_tokens": st.integers(1, 16),
    "importance_ratio": st.floats(0, 1),
    "importance_metric": st.sampled_from(["value_norm", "key_norm", "mixed", "attention"]),
    "min_importance_tokens": st.integers(0, 6),
    "use_adaptive_budget": st.booleans(),
    "coverage_segments": st.integers(1, 5),
    "coverage_priority": st.floats(0, 1),
    "anchor_mode": st.sampled_from(["grid", "mean", "hybrid"]),
    "enable_pos_shift": st.booleans(),
})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=adms_params, chunk=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_budget_holds_after_every_update(params, chunk, seed):
    """Seed 004 bug 1: whatever the interval, slots never exceed sink + budget + recent, and the
    resident bytes stay under the configuration's bound (adaptive budgets included)."""
    ids = torch.randint(0, TINY["vocab_size"], (1, 90), generator=torch.Generator().manual_seed(seed))
    cache = make_cache(MODEL, "adms", enable_dynamic_sink=False, **params)
    config = cache.config
    geometry = KVGeometry.of(MODEL)
    bound = config.layer_bytes(geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)

    def check(cache, logits):
        assert torch.isfinite(logits).all()
        assert max(cache.cache_tokens()) <= config.max_slots
        assert max(cache.cache_bytes(i) for i in range(len(cache.layers))) <= bound  # adaptive budgets too

    with cache:
        stream(ids, cache, chunk, check)


def test_budget_holds_for_adaptive_heads_without_compressed_share(token_stream):
    """Regression (found by the property test): with adaptive budgets a head whose exact share
    takes its whole mid budget gets no compressed slot, even from vq."""
    cache = make_cache(MODEL, "adms", start_size=0, recent_size=1, compressed_budget=3, compressor_type="vq",
                       num_clusters=1, compression_interval=1, importance_ratio=0.0, min_importance_tokens=2,
                       use_adaptive_budget=True, enable_dynamic_sink=False, enable_pos_shift=False)
    with cache:
        stream(token_stream[:, :60], cache, 1, lambda c, logits: None if max(c.cache_tokens()) <= 4 else pytest.fail("over budget"))


def test_zero_mid_budget_is_streaming_llm(token_stream):
    """compressed_budget=0 leaves sinks + recent: the same logits as StreamingLLM."""
    ids = token_stream[:, :120]
    outputs = []
    for cache in (enable_streaming_llm(MODEL, start_size=4, recent_size=16),
                  enable_adms_llm(MODEL, start_size=4, recent_size=16, compressed_budget=0, enable_dynamic_sink=False)):
        collected = []
        with cache:
            stream(ids, cache, 1, lambda c, logits: collected.append(logits[0, -1]))
        outputs.append(torch.stack(collected))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5


def test_exact_only_keeps_the_top_value_norm_tokens(token_stream):
    """importance_ratio=1, no coverage: the mid tier of layer 0 holds exactly the evicted tokens
    with the largest value norms (layer 0's values depend only on the token)."""
    sink, recent, budget = 2, 10, 12
    ids = token_stream[:, :150]
    cache = enable_adms_llm(MODEL, start_size=sink, recent_size=recent, compressed_budget=budget, importance_ratio=1.0,
                            coverage_priority=0.0, compression_interval=1, enable_dynamic_sink=False)
    stream(ids, cache)
    with torch.no_grad():
        full = returned_cache(MODEL(input_ids=ids, use_cache=True))
    values = full.layers[0].values[0]  # (H, T, D)
    seen = ids.shape[1]
    evicted_norms = values[:, sink:seen - recent].norm(dim=-1)
    expected = (evicted_norms.topk(budget, dim=-1).indices + sink).sort(dim=-1).values
    kept = cache.layers[0].positions[:, sink:sink + budget]
    assert torch.equal(kept, expected)


@pytest.mark.parametrize("metric,chunk", [("attention", 1), ("attention", 5), ("value_norm", 3)])
def test_exact_only_index_selection_equals_the_general_step(token_stream, metric, chunk, monkeypatch):
    """The exact-only fast path (an index selection) keeps what the general tier rebuild keeps:
    same logits, same slot positions."""
    params = dict(start_size=2, recent_size=9, compressed_budget=14, importance_ratio=1.0, importance_metric=metric,
                  coverage_segments=3, coverage_priority=0.4, compression_interval=3, enable_dynamic_sink=False)
    runs, policies = [], []
    for general in (False, True):
        if general:  # the general layer (tiers.ADMSLayer) for the same exact-only configuration
            monkeypatch.setattr(ADMSConfig, "exact_only", property(lambda self: False))
        cache = make_cache(MODEL, "adms", **params)
        policies.append(cache.layers[0].policy)
        collected = []
        with cache:
            stream(token_stream[:, :100], cache, chunk, lambda c, logits: collected.append(logits[0, -1]))
        runs.append((torch.stack(collected), [layer.positions.clone() for layer in cache.layers]))
    assert isinstance(policies[0], ExactOnlyADMS) and isinstance(policies[1], ADMSLayer)
    assert policies[0].exact_only and policies[0].compressions > 0 and policies[1].compressions > 0
    assert (runs[0][0] - runs[1][0]).abs().max() < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_coverage_spreads_part_of_the_selection_over_time():
    positions = torch.arange(40).expand(1, 40)
    scores = torch.arange(40, dtype=torch.float32)[None]  # the best are all at the end
    plain = coverage_ranking(scores, positions, 8, segments=4, priority=0.0)[:, :8]
    assert set(plain[0].tolist()) == set(range(32, 40))
    spread = coverage_ranking(scores, positions, 8, segments=4, priority=1.0)[:, :8]
    picked = sorted(spread[0].tolist())
    assert picked == [8, 9, 18, 19, 28, 29, 38, 39]  # the best two of each quarter


def test_low_rank_error_falls_with_rank():
    torch.manual_seed(0)
    data = torch.randn(2, 200, 32) @ torch.randn(32, 32)
    errors = [(low_rank_approximation(data, r, 512)[0] - data).norm().item() for r in (2, 8, 16, 32)]
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-3 * data.norm().item()  # full rank reconstructs
    # the basis fitted on a subsample still reconstructs data of lower rank exactly
    low = torch.randn(2, 200, 4) @ torch.randn(4, 32)
    assert (low_rank_approximation(low, 4, 16)[0] - low).norm() < 1e-3 * low.norm()


def _quantisation_error(points: PointSet, clusters: int) -> float:
    assignment = kmeans_assignment(points.keys, points.counts, torch.full((points.keys.shape[0],), clusters), 6)
    centroids = weighted_means(points, assignment, clusters).keys
    rows = centroids.gather(1, assignment.unsqueeze(-1).expand_as(points.keys))
    return (rows - points.keys).pow(2).sum().item()


def _points(n: int, dim: int = 16, seed: int = 0) -> PointSet:
    torch.manual_seed(seed)
    keys = torch.randn(2, n, dim)
    return PointSet(keys, torch.randn(2, n, dim), torch.ones(2, n), torch.arange(n).double().expand(2, n).clone(),
                    torch.rand(2, n))


def test_vq_error_falls_with_clusters():
    points = _points(300)
    errors = [_quantisation_error(points, k) for k in (2, 8, 32, 128)]
    assert errors[0] > errors[1] > errors[2] > errors[3]


def test_vq_and_summary_conserve_tokens_and_respect_capacity():
    points = _points(50)
    capacity = torch.tensor([7, 4])
    for compressor in (VQCompressor(num_clusters=6), SummaryCompressor()):
        tier = compressor.compress(points, capacity)
        assert torch.allclose(tier.counts.sum(dim=1), torch.tensor([50.0, 50.0]))
        assert (tier.real_counts() <= capacity.clamp(max=6 if isinstance(compressor, VQCompressor) else 99)).all()
        # the count-weighted mean position of all members is preserved
        mean = (tier.positions * tier.counts.double()).sum(dim=1) / 50
        assert torch.allclose(mean, torch.full((2,), 24.5, dtype=torch.float64))


def test_summary_segments_are_contiguous_in_time():
    points = _points(20)
    tier = SummaryCompressor().compress(points, torch.tensor([4, 5]))
    assert tier.counts[0].tolist()[:4] == [5.0, 5.0, 5.0, 5.0]
    assert tier.positions[0].tolist()[:4] == [2.0, 7.0, 12.0, 17.0]
    assert tier.counts[1].tolist() == [4.0] * 5


def test_anchor_modes():
    tier = _points(3)
    tier.positions = torch.tensor([[10.0, 30.0, 90.0], [50.0, 20.0, 0.0]], dtype=torch.float64)
    tier.counts = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # head 1's last slot is empty
    low, high = 4.0, 124.0
    assert anchor_positions(tier, "mean", low, high).tolist() == [[10, 30, 90], [50, 20, 4]]
    # grid: the i-th of c slots (in time order) at low + (i + 1/2) (high - low) / c
    assert anchor_positions(tier, "grid", low, high).tolist() == [[24, 64, 104], [94, 34, 4]]
    assert anchor_positions(tier, "hybrid", low, high).tolist() == [[17, 47, 97], [72, 27, 4]]


@pytest.mark.parametrize("mode", ["grid", "mean", "hybrid"])
def test_compressed_slots_sit_at_their_anchors_in_the_cache(token_stream, mode):
    cache = enable_adms_llm(MODEL, start_size=2, recent_size=8, compressed_budget=12, compressor_type="summary",
                            importance_ratio=0.0, min_importance_tokens=0, anchor_mode=mode,
                            compression_interval=1, enable_dynamic_sink=False)
    with cache:
        stream(token_stream[:, :100], cache)
    policy, layer = cache.layers[0].policy, cache.layers[0]
    expected = anchor_positions(policy.tier, mode, 2.0, 100.0 - 8)
    stored = layer.positions[:, 2:2 + policy.tier.size]
    assert torch.equal(stored.sort(dim=-1).values, expected.sort(dim=-1).values)
    assert (layer.positions.diff(dim=-1) >= 0).all()  # slots stay in time order


class PairMean:
    """Merge consecutive pairs of rows (a user's custom compressor)."""

    def __init__(self):
        self.calls = []

    def compress(self, K, V):
        self.calls.append(tuple(K.shape))
        n = K.shape[0] // 2 * 2
        return K[:n].reshape(-1, 2, K.shape[-1]).mean(1), V[:n].reshape(-1, 2, V.shape[-1]).mean(1)


def test_custom_compressor_seed_contract(token_stream):
    config = ADMSConfig(start_size=2, recent_size=8, compressed_budget=12, compressor_type="custom",
                        importance_ratio=0.25, enable_dynamic_sink=False, compression_interval=4)
    cache = ADMSKVCache(config, MODEL)
    compressor = PairMean()
    cache.compressors = {key: compressor for key in cache.compressors}  # seed 000's snippet
    assert set(cache.compressors) == {(l, h) for l in range(2) for h in range(TINY["num_key_value_heads"])}
    with cache:
        stream(token_stream[:, :80], cache, 1, lambda c, logits: None)
    assert compressor.calls and all(shape[1] == HEAD_DIM for shape in compressor.calls)
    assert max(cache.cache_tokens()) <= config.max_slots
    tier = cache.layers[0].policy.tier
    assert tier.counts.sum(dim=1).min() > tier.real_counts().min()  # rows stand for several tokens


class ToldCapacity:
    """A user compressor that asks for its capacity and keeps the first ``capacity`` rows."""

    def __init__(self):
        self.calls = []

    def compress(self, K, V, capacity):
        self.calls.append((K.shape[0], capacity))
        return K[:capacity], V[:capacity]


def test_custom_compressor_told_its_capacity(token_stream):
    compressor = ToldCapacity()
    cache = enable_adms_llm(MODEL, compressor=compressor, start_size=2, recent_size=8, compressed_budget=12,
                            compressor_type="custom", enable_dynamic_sink=False, importance_ratio=0.25,
                            compression_interval=2)
    with cache:
        stream(token_stream[:, :96], cache, 1, lambda c, logits: None)
    assert compressor.calls and all(0 < capacity < rows for rows, capacity in compressor.calls)
    assert max(cache.cache_tokens()) <= cache.max_slots()


def test_custom_compressor_not_called_without_capacity():
    from streaming_llm.compressors import CustomCompressor
    from streaming_llm.compressors.base import PointSet

    compressor = ToldCapacity()
    heads, rows, dim = 2, 5, HEAD_DIM
    points = PointSet(torch.randn(heads, rows, dim), torch.randn(heads, rows, dim), torch.ones(heads, rows),
                      torch.arange(rows).double().expand(heads, rows), torch.ones(heads, rows))
    tier = CustomCompressor([compressor, compressor]).compress(points, torch.tensor([0, 3]))
    assert compressor.calls == [(5, 3)]  # head 0 had no room: no call, no rows
    assert tier.real_counts().tolist() == [0, 3]


def test_custom_compressor_errors(token_stream):
    with pytest.raises(ValueError, match="needs a compressor"):
        cache = enable_adms_llm(MODEL, start_size=2, recent_size=4, compressed_budget=8, compressor_type="custom",
                                enable_dynamic_sink=False)
        stream(token_stream[:, :40], cache)

    class TooMany:
        def compress(self, K, V):
            return torch.cat([K, K]), torch.cat([V, V])

    cache = enable_adms_llm(MODEL, compressor=TooMany(), start_size=2, recent_size=4, compressed_budget=8,
                            compressor_type="custom", enable_dynamic_sink=False, importance_ratio=0.0, min_importance_tokens=0)
    with pytest.raises(ValueError, match="capacity"):
        stream(token_stream[:, :40], cache)
    with pytest.raises(ValueError, match="compress"):
        enable_adms_llm(MODEL, compressor=object(), compressor_type="custom")
    with pytest.raises(ValueError, match="needs the model"):
        ADMSKVCache(ADMSConfig())


def test_stats_lines_are_logged(token_stream, caplog):
    cache = enable_adms_llm(MODEL, start_size=2, recent_size=8, compressed_budget=12, enable_dynamic_sink=False,
                            log_every=25)
    with caplog.at_level(logging.INFO, logger="streaming_llm.adms"), cache:
        stream(token_stream[:, :60], cache)
    stats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[ADMS Stats @")]
    sizes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[ADMS Cache @")]
    assert [s.split(" ")[3] for s in stats] == ["25]", "50]"]
    assert "Avg per head: exact=" in stats[0] and "compressed=" in stats[0] and "dropped=" in stats[0]
    assert sizes[1].startswith("[ADMS Cache @ 50] Actual size: ") and "Expected max: 22, Ratio: " in sizes[1]


@pytest.mark.parametrize("compressor_type", ["low_rank", "vq"])
def test_equal_memory_sizing(token_stream, compressor_type):
    """Sized to a byte target, ADMS stays under it and uses most of it; low-rank slots are cheaper,
    so the same bytes leave a longer recent window than vq's full-size centroids."""
    target = 2 * 60 * KVGeometry.of(MODEL).bytes_per_slot(ADMSConfig())
    shape = dict(start_size=2, compressed_budget=32, importance_ratio=0.25, enable_dynamic_sink=False)
    config = size_to_bytes(ADMSConfig(compressor_type=compressor_type, rank=4, **shape), MODEL, target)
    cache = make_cache(MODEL, "adms", **config.to_dict())
    peak = []
    with cache:
        stream(token_stream[:, :200], cache, 1, lambda c, logits: peak.append(c.cache_bytes()))
    assert max(peak) <= target
    assert max(peak) > 0.85 * target
    if compressor_type == "low_rank":
        # resident memory (issue 18): a low-rank slot is held as a materialised full-width row, so
        # it costs what a vq centroid costs and the same bytes leave the same recent window
        vq = size_to_bytes(ADMSConfig(compressor_type="vq", **shape), MODEL, target)
        assert config.recent_size == vq.recent_size
        assert max(peak) >= cache.policy_stats()["adms_materialized_bytes"]


def test_low_rank_slot_costs_a_full_resident_row():
    """Issue 18: the byte model counts what is resident. A low-rank slot is kept as its
    materialised reconstruction (a full K/V row), not as the rank-r factors it was counted as."""
    geometry = KVGeometry.of(MODEL)
    base = dict(start_size=0, recent_size=1, compressed_budget=64, importance_ratio=0.0, min_importance_tokens=0,
                compression_interval=1, enable_dynamic_sink=False)
    low_rank = ADMSConfig(compressor_type="low_rank", rank=4, **base)
    summary = ADMSConfig(compressor_type="summary", **base)
    args = (geometry.num_kv_heads, geometry.head_dim, geometry.element_bytes)
    row = 2 * geometry.head_dim * geometry.element_bytes + 8 + 4 + 13  # K, V, position, score, count/kind/center
    assert low_rank.layer_bytes(*args) == summary.layer_bytes(*args) == low_rank.max_slots * geometry.num_kv_heads * row
    assert math.isclose(low_rank.mid_capacity, 64)


def test_adms_cache_takes_adms_configs_only():
    """ADMSKVCache tells its config by the policy name (it cannot import ADMSConfig without an import
    cycle); another policy's config is refused, ADMS with the memory tier is accepted."""
    from streaming_llm.policies import make_policy_config

    with pytest.raises(ValueError, match="config must be an ADMSConfig; got StreamingConfig"):
        ADMSKVCache(make_policy_config("streaming"), MODEL)
    cache = ADMSKVCache(make_policy_config("adms+memory", start_size=2, recent_size=64, compressed_budget=8), MODEL)
    assert isinstance(cache, ADMSKVCache)
    cache.disable()
