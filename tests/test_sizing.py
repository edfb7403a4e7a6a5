"""Equal-memory sizing: a policy sized to N bytes really holds at most N bytes, and nearly N."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from policy_table import first_row
from streaming_llm import cache_from_config, list_policies, make_policy_config
from streaming_llm.cli import main
from streaming_llm.policies import is_bounded
from streaming_llm.sizing import KVGeometry, size_to_bytes
from streaming_llm.compat import cache_kwargs

TARGET = 40_000


@pytest.mark.parametrize("policy", [p for p in list_policies() if is_bounded(p)])
def test_sized_policy_uses_at_most_and_nearly_the_target(token_stream, policy):
    model = tiny_model("llama")
    params = first_row(policy)  # small windows and mid tiers: the target is what sizes the rest
    config = size_to_bytes(make_policy_config(policy, **params), model, TARGET)
    one_slot_everywhere = KVGeometry.of(model).num_layers * KVGeometry.of(model).bytes_per_slot(config)
    peak = 0
    with cache_from_config(model, config) as cache, torch.no_grad():
        for t in range(200):
            model(input_ids=token_stream[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True)
            peak = max(peak, cache.cache_bytes())
    assert TARGET - one_slot_everywhere <= peak <= TARGET


def test_bad_targets_are_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="cache_bytes must be an integer >= 1"):
        size_to_bytes(make_policy_config("streaming"), model, 0)
    with pytest.raises(ValueError, match="less than one slot"):
        size_to_bytes(make_policy_config("tova"), model, 100)
    with pytest.raises(ValueError, match="no budget"):
        size_to_bytes(make_policy_config("full"), model, 10_000)


def test_cli_equal_memory_mode(tiny_model_dir, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_model_dir), "--num-tokens", "120", "--quiet", "--json",
                 "--cache-bytes", "30000", "--policy", "full", "streaming", "tova", "h2o"])
    assert code == 0
    records = {r["policy"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records["full"]["cache_bytes_max"] > 30000
    for name in ("streaming", "tova", "h2o"):
        assert 25000 < records[name]["cache_bytes_max"] <= 30000
        assert records[name]["cache_bytes_target"] == 30000


def test_cache_bytes_from_a_reference_policy_follow_the_dtype(tiny_model_dir, capsys):
    """``--cache-bytes POLICY``: every bounded policy holds the bytes the reference holds on this
    model in this dtype, so a bfloat16 run stays at equal memory without recomputing sizes."""
    targets = {}
    for dtype in ("float32", "bfloat16"):
        code = main(["eval", "--model", str(tiny_model_dir), "--num-tokens", "60", "--quiet", "--json", "--dtype", dtype,
                     "--cache-bytes", "streaming:start_size=2,recent_size=20",
                     "--policy", "full", "streaming:start_size=2,recent_size=20", "sliding_window"])
        assert code == 0
        records = {r["policy"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
        assert records["sliding_window"]["params"]["window_size"] == 22  # slots cost the same in both
        assert "cache_bytes_target" not in records["streaming"] and "cache_bytes_target" not in records["full"]
        targets[dtype] = records["sliding_window"]["cache_bytes_target"]
    assert targets["float32"] > targets["bfloat16"] > targets["float32"] // 2  # K/V halve, positions do not


def test_cache_bytes_must_name_a_bounded_policy(tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--cache-bytes", "full", "--policy", "streaming"]) == 2
    assert "policy 'full' is unbounded" in capsys.readouterr().err
