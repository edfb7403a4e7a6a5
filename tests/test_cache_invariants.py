"""Model-free invariants of BoundedLayer/BoundedCache on random tensors, plus config validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from policy_table import POLICY_ROWS, rows
from streaming_llm import UnsupportedModelError, list_policies, make_cache, make_policy_config
from streaming_llm.cache import BoundedLayer
from streaming_llm.policies import dynamic_sink_size
from streaming_llm.compat import cache_kwargs

H, D = 2, 8


def _feed(layer: BoundedLayer, q: int) -> torch.Tensor:
    """One update of ``q`` tokens; checks the mask-size contract and returns the kept positions."""
    stored, seen = layer.num_slots, layer.seen_tokens
    kv_length, kv_offset = layer.get_mask_sizes(q)
    keys, values = layer.update(torch.randn(1, H, q, D), torch.randn(1, H, q, D))
    assert keys.shape[-2] == values.shape[-2] == kv_length == stored + q
    assert kv_offset == seen - stored
    assert layer.get_seq_length() == seen + q
    return layer.positions[0]


@settings(max_examples=60, deadline=None)
@given(
    sink=st.integers(0, 6),
    recent=st.integers(1, 20),
    chunks=st.lists(st.integers(1, 30), min_size=1, max_size=25),
)
def test_streaming_keeps_exactly_sinks_and_recent(sink, recent, chunks):
    config = make_policy_config("streaming", start_size=sink, recent_size=recent)
    layer = BoundedLayer(config.build_layer_policy(0, 1))
    for q in chunks:
        positions = _feed(layer, q).tolist()
        seen = layer.seen_tokens
        expected = list(range(min(sink, seen))) + list(range(max(sink, seen - recent), seen))
        assert positions == expected
        assert layer.num_slots <= sink + recent
        assert layer.keys.shape[-2] == layer.values.shape[-2] == layer.num_slots


@settings(max_examples=40, deadline=None)
@given(window=st.integers(1, 20), chunks=st.lists(st.integers(1, 30), min_size=1, max_size=25))
def test_sliding_window_keeps_last_tokens(window, chunks):
    layer = BoundedLayer(make_policy_config("sliding_window", window_size=window).build_layer_policy(0, 1))
    for q in chunks:
        positions = _feed(layer, q).tolist()
        assert positions == list(range(max(0, layer.seen_tokens - window), layer.seen_tokens))


def test_stored_values_follow_their_tokens():
    """The slots kept are the tokens' own K/V, not a shifted copy."""
    layer = BoundedLayer(make_policy_config("streaming", start_size=2, recent_size=3).build_layer_policy(0, 1))
    for t in range(12):
        stamp = torch.full((1, H, 1, D), float(t))
        layer.update(stamp, stamp)
    assert layer.values[0, 0, :, 0].tolist() == [0, 1, 9, 10, 11]
    assert layer.keys[0, 0, :, 0].tolist() == [0, 1, 9, 10, 11]  # no position strategy: keys untouched


def test_cache_tokens_and_bytes(tiny_llama, token_stream):
    cache = make_cache(tiny_llama, "streaming", start_size=4, recent_size=28)
    with torch.no_grad():
        for t in range(64):
            tiny_llama(input_ids=token_stream[:, t : t + 1], **cache_kwargs(tiny_llama, cache), use_cache=True)
    num_layers, kv_heads = tiny_llama.config.num_hidden_layers, tiny_llama.config.num_key_value_heads
    head_dim = tiny_llama.config.hidden_size // tiny_llama.config.num_attention_heads
    assert cache.cache_tokens() == [32] * num_layers
    per_layer = 2 * kv_heads * 32 * head_dim * 4 + kv_heads * 32 * 8  # K and V in fp32 + int64 position per slot and head
    assert cache.cache_bytes(0) == per_layer
    assert cache.cache_bytes() == per_layer * num_layers
    assert cache.get_seq_length() == 64
    assert cache.max_slots() == 32


def test_batch_size_above_one_is_refused(tiny_llama):
    cache = make_cache(tiny_llama, "streaming", start_size=2, recent_size=8)
    with pytest.raises(ValueError, match="batch size 1"):
        tiny_llama(input_ids=torch.zeros(2, 3, dtype=torch.long), **cache_kwargs(tiny_llama, cache), use_cache=True)


def test_reset_starts_a_new_stream(tiny_llama, token_stream):
    cache = make_cache(tiny_llama, "streaming", start_size=2, recent_size=8)
    with torch.no_grad():
        first = tiny_llama(input_ids=token_stream[:, :20], **cache_kwargs(tiny_llama, cache), use_cache=True).logits
        cache.reset()
        assert cache.get_seq_length() == 0 and cache.cache_bytes() == 0
        again = tiny_llama(input_ids=token_stream[:, :20], **cache_kwargs(tiny_llama, cache), use_cache=True).logits
    assert torch.allclose(first, again)


def test_dynamic_sink_size():
    assert dynamic_sink_size(4, 2048) == 20
    assert dynamic_sink_size(4, 8192) == 81
    assert dynamic_sink_size(4, 16384) == 163
    assert dynamic_sink_size(4, 32768) == 327
    assert dynamic_sink_size(400, 2048) == 400  # never below start_size
    config = make_policy_config("streaming", start_size=4, recent_size=10, enable_dynamic_sink=True, max_seq_length=8192)
    assert config.build_layer_policy(0, 1).max_slots() == 81 + 10


@pytest.mark.parametrize("policy,params,message", [
    ("streaming", dict(recent_size=0), "recent_size must be an integer >= 1"),
    ("streaming", dict(recent_size=-5), "recent_size must be an integer >= 1"),
    ("streaming", dict(start_size=-1), "start_size must be an integer >= 0"),
    ("streaming", dict(start_size=2.5), "start_size must be an integer"),
    ("streaming", dict(start_size=True), "start_size must be an integer"),
    ("streaming", dict(recent_size="many"), "recent_size must be an integer"),
    ("streaming", dict(max_seq_length=0), "max_seq_length must be an integer >= 1"),
    ("streaming", dict(enable_dynamic_sink="maybe"), "enable_dynamic_sink must be a bool"),
    ("streaming", dict(window_size=3), "unknown parameter.*window_size.*allowed: .*recent_size"),
    ("sliding_window", dict(window_size=0), "window_size must be an integer >= 1"),
    ("sliding_window", dict(recent_size=3), "unknown parameter.*recent_size.*allowed: .*window_size"),
    ("full", dict(enable_pos_shift=3), "enable_pos_shift must be a bool"),
    ("h2o_typo", {}, f"policy must be one of {', '.join(list_policies())}; got 'h2o_typo'"),
    ("h2o", dict(heavy_size=-1), "heavy_size must be an integer >= 0"),
    ("tova", dict(cache_size=0), "cache_size must be an integer >= 1"),
    ("snapkv", dict(cache_size=40, window_size=32, reselect_interval=32), "cache_size must be an integer >= 64"),
    ("snapkv", dict(pooling="meanpool"), "pooling must be one of 'avgpool', 'maxpool'"),
    ("dynamickv", dict(ratio_max=0.5), "ratio_max must be a number >= 1"),
    ("rocketkv", dict(topk=0), "topk must be an integer >= 1"),
    ("rocketkv", dict(page_size="two"), "page_size must be an integer"),
    ("adms", dict(compressed_budget=-1), "compressed_budget must be an integer >= 0"),
    ("adms", dict(compressor_type="pca"), "compressor_type must be one of 'low_rank', 'vq', 'summary', 'custom'"),
    ("adms", dict(rank=0), "rank must be an integer >= 1"),
    ("adms", dict(num_clusters=0), "num_clusters must be an integer >= 1"),
    ("adms", dict(compression_interval=0), "compression_interval must be an integer >= 1"),
    ("adms", dict(svd_max_tokens=0), "svd_max_tokens must be an integer >= 1"),
    ("adms", dict(importance_ratio=1.5), r"importance_ratio must be a number in \[0, 1\]"),
    ("adms", dict(importance_ratio="half"), "importance_ratio must be a number"),
    ("adms", dict(importance_metric="entropy"), "importance_metric must be one of 'value_norm', 'key_norm', 'mixed', 'attention'"),
    ("adms", dict(min_importance_tokens=-1), "min_importance_tokens must be an integer >= 0"),
    ("adms", dict(use_adaptive_budget="sometimes"), "use_adaptive_budget must be a bool"),
    ("adms", dict(coverage_segments=0), "coverage_segments must be an integer >= 1"),
    ("adms", dict(coverage_priority=-0.1), r"coverage_priority must be a number in \[0, 1\]"),
    ("adms", dict(anchor_mode="median"), "anchor_mode must be one of 'grid', 'mean', 'hybrid'"),
    ("adms", dict(recent_size=0), "recent_size must be an integer >= 1"),
    ("adms", dict(log_every=-1), "log_every must be an integer >= 0"),
    ("adms", dict(budget=3), "unknown parameter.*budget.*allowed: .*compressed_budget"),
])
def test_bad_parameters_raise_value_error(tiny_llama, policy, params, message):
    with pytest.raises(ValueError, match=message):
        make_cache(tiny_llama, policy, **params)


def test_string_values_are_coerced_like_the_cli():
    config = make_policy_config("streaming", start_size="8", recent_size="100", enable_dynamic_sink="true")
    assert (config.start_size, config.recent_size, config.enable_dynamic_sink) == (8, 100, True)


def test_every_policy_builds_with_defaults(tiny_llama):
    for name in list_policies():
        with make_cache(tiny_llama, name) as cache:
            assert cache.policy_name == name
    assert tiny_llama.config._attn_implementation == "sdpa"


def test_length_dependent_rope_is_refused():
    model = tiny_model("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UnsupportedModelError, match="rope_type 'dynamic'"):
        make_cache(model, "streaming")


def test_table_covers_every_policy():
    """A registered policy without a row in tests/policy_table.py is a policy no test runs."""
    assert {name for name, _ in POLICY_ROWS} == set(list_policies())


@pytest.mark.parametrize("policy,params", rows())
def test_every_policy_holds_its_budget_on_a_model(tiny_llama, token_stream, policy, params):
    """The budget holds after every update, prefill past it included; ``bounded`` says whether there is one."""
    with make_cache(tiny_llama, policy, **params) as cache, torch.no_grad():
        tiny_llama(input_ids=token_stream[:, :40], **cache_kwargs(tiny_llama, cache), use_cache=True)
        for t in range(40, 90):
            assert max(cache.cache_tokens()) <= (cache.max_slots() or 10**9)
            tiny_llama(input_ids=token_stream[:, t : t + 1], **cache_kwargs(tiny_llama, cache), use_cache=True)
        assert (cache.max_slots() is not None) == make_policy_config(policy).bounded
        if cache.max_slots() is not None:
            assert max(cache.cache_tokens()) <= cache.max_slots() < 90
        assert cache.get_seq_length() == 90
