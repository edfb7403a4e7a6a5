"""Equal-memory sizing: a policy sized to N bytes really holds at most N bytes, and nearly N."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from streaming_llm import cache_from_config, list_policies, make_policy_config
from streaming_llm.cli import main
from streaming_llm.sizing import KVGeometry, size_to_bytes
from streaming_llm.compat import cache_kwargs

SMALL_WINDOW = dict(window_size=4, reselect_interval=4, kernel_size=3)
TARGET = 40_000


@pytest.mark.parametrize("policy", [p for p in list_policies() if p != "full"])
def test_sized_policy_uses_at_most_and_nearly_the_target(token_stream, policy):
    model = tiny_model("llama")
    params = SMALL_WINDOW if policy in ("snapkv", "dynamickv", "rocketkv") else {}
    if policy == "adms":
        params = dict(start_size=2, compressed_budget=12, enable_dynamic_sink=False, rank=4)
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
