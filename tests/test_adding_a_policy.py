"""Adding a policy takes one file and one registry line: a policy defined here, registered for
one test, runs through ``make_cache``, equal-memory sizing, the tables and legends of the reports,
and the ``eval`` command, without any other change to the package."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from conftest import tiny_model
from streaming_llm import list_policies, make_cache, make_policy_config
from streaming_llm.checks import check_int
from streaming_llm.cli import main
from streaming_llm.compat import cache_kwargs
from streaming_llm.policies import REGISTRY, PolicyConfig
from streaming_llm.policies.sliding_window import KeepLast
from streaming_llm.report.comparison import compare, shown_params
from streaming_llm.report.plots import run_label
from streaming_llm.sizing import KVGeometry, size_for_comparison


@dataclass
class LastNConfig(PolicyConfig):
    """The file a new policy is: keeps the last ``n`` tokens of every layer."""

    n: int = 8

    name: ClassVar[str] = "last_n"
    size_fields: ClassVar[tuple[str, ...]] = ("n",)
    label_fields: ClassVar[dict[str, str]] = {"n": "last"}

    def validate(self) -> None:
        check_int("n", self.n, 1)

    def build_layer_policy(self, layer_idx: int, num_layers: int) -> KeepLast:
        return KeepLast(self.n)

    def sized(self, slots: int) -> "LastNConfig":
        return dataclasses.replace(self, n=slots)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, LastNConfig.name, LastNConfig)  # the one registry line; undone after the test
    return LastNConfig.name


def test_a_registered_policy_runs_sizes_and_reports(registered, token_stream):
    model = tiny_model("llama")
    assert registered in list_policies()
    with make_cache(model, registered, n=6) as cache, torch.no_grad():
        model(input_ids=token_stream[:, :30], **cache_kwargs(model, cache), use_cache=True)
        assert cache.cache_tokens() == [6] * model.config.num_hidden_layers and cache.max_slots() == 6
    geometry = KVGeometry.of(model)
    target = 10 * geometry.num_layers * geometry.bytes_per_slot(make_policy_config(registered))
    assert size_for_comparison(make_policy_config(registered), model, target).n == 10
    assert shown_params(registered, {"n": 8, "enable_pos_shift": True}) == {"n": 8}
    assert run_label({"policy": registered, "params": {"n": 8}}) == "last_n last=8"
    row = compare([{"policy": "streaming", "params": {}, "ppl": 10.0, "tok_per_s": 1.0},
                   {"policy": registered, "params": {"n": 8}, "ppl": 9.0, "tok_per_s": 2.0}])[1]
    assert row["params"] == {"n": 8} and row["improvement_pct"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        make_policy_config(registered, n=0)


def test_a_registered_policy_runs_in_eval_at_equal_memory(registered, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_model_dir), "--num-tokens", "60", "--quiet", "--json",
                 "--cache-bytes", "20000", "--policy", "full", "streaming", registered, "--output-dir", str(out)])
    assert code == 0
    records = {r["policy"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert 15000 < records[registered]["cache_bytes_max"] <= 20000
    assert records[registered]["cache_bytes_target"] == 20000 and "cache_bytes_target" not in records["full"]
    report = (out / "results.md").read_text()
    assert f"| last_n | n={records[registered]['params']['n']} |" in report
    assert "Command: `streaming-llm eval --model" in report  # the command run, not the test runner's argv
    assert main(["policies"]) == 0 and "last_n\n    enable_pos_shift: bool = True, n: int = 8" in capsys.readouterr().out


def test_the_registry_is_restored():
    assert "last_n" not in list_policies()
