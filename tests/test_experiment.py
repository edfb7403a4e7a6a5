"""Seed 003's method names (aliases of our policies) and its experiment command
(``streaming-llm experiment`` / ``python -m streaming_llm.experiment``) on the tiny model, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

import streaming_llm
import streaming_llm.tasks.benchmark_cli as benchmark_cli
import streaming_llm.tasks.cli as tasks_cli
from streaming_llm import make_cache, make_policy_config
from streaming_llm.cli import main
from streaming_llm.data import load_text
from streaming_llm.evaluation.runs import RunSpec
from streaming_llm.experiment.cli import SEED_METHODS, sources
from streaming_llm.policies import ALIASES, REGISTRY, canonical_name, get_policy_config_class, list_policies

#: seed 003's names -> the policy each must build (atskv is its own registry name)
SEED_NAMES = {"full": "full", "sliding_window": "sliding_window", "dynamic_kv": "dynamickv", "rocket_kv": "rocketkv",
              "atskv": "atskv"}


def test_seed_method_names_are_the_defaults_and_all_named_here():
    assert tuple(SEED_NAMES) == SEED_METHODS


@pytest.mark.parametrize("seed_name", list(SEED_NAMES))
def test_seed_names_build_our_policies_and_records_carry_the_canonical_name(tiny_llama, seed_name):
    policy = SEED_NAMES[seed_name]
    assert canonical_name(seed_name) == policy and RunSpec.parse(seed_name).policy == policy
    if policy not in REGISTRY:  # atskv before its branch lands: refused with the allowed names
        with pytest.raises(ValueError, match=f"policy must be one of {', '.join(list_policies())}; got '{seed_name}'"):
            make_policy_config(seed_name)
        return
    assert make_policy_config(seed_name).name == policy
    with make_cache(tiny_llama, seed_name) as cache:
        assert cache.policy_name == policy


def test_alias_table_points_at_registered_policies_and_shadows_none():
    assert ALIASES and all(target in REGISTRY and alias not in REGISTRY for alias, target in ALIASES.items())
    assert "dynamic_kv" not in list_policies()  # aliases are other spellings, not more policies


def test_aliases_take_memory_parameters_and_are_one_job_with_their_policy():
    config = make_policy_config("dynamic_kv+memory", memory_block_size=8)
    assert config.name == "dynamickv+memory" and config.memory.block_size == 8
    assert get_policy_config_class("dynamic_kv+memory") is get_policy_config_class("dynamickv+memory")
    assert RunSpec.parse("rocket_kv:topk=8") == RunSpec.parse("rocketkv:topk=8")


def test_unknown_policy_error_names_policies_and_aliases():
    with pytest.raises(ValueError, match="got 'dynamic-kv'.*aliases dynamic_kv = dynamickv, rocket_kv = rocketkv"):
        make_policy_config("dynamic-kv")


def test_eval_takes_an_alias_and_records_the_policy(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--policy", "rocket_kv:storage_size=64,topk=16",
                 "--set", "rocket_kv.page_size=2", "--num-tokens", "24", "--output-dir", str(tmp_path), "--quiet",
                 "--json"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["policy"] == "rocketkv" and record["params"]["page_size"] == 2 and record["job"]["policy"] == "rocketkv"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A --source folder: longbench/hotpotqa.jsonl and zeroscrolls/qasper/validation.jsonl, one example each."""
    root = tmp_path_factory.mktemp("experiment-source")
    book = load_text("builtin:pioneer-days")
    _write_jsonl(root / "longbench" / "hotpotqa.jsonl", [
        {"input": "Who met Bob?", "context": book[:3000] + " Alice met Bob.", "answers": ["Alice"], "_id": "lb0"}])
    _write_jsonl(root / "zeroscrolls" / "qasper" / "validation.jsonl", [
        {"id": "zs0", "input": "Read and answer.\n\n" + book[4000:7000] + "\n\nQuestion: topic?\nAnswer:",
         "output": "a pioneer family"}])
    return root


METHODS = ["full", "sliding_window", "dynamic_kv", "rocket_kv"]


def _experiment(model_dir, out, *extra) -> int:
    return main(["experiment", "--model_name", str(model_dir), "--methods", *METHODS, "--context_sizes", "300", "400",
                 "--max_seq_len", "400", "--cache_budget", "160", "--synthetic_tasks", "passkey", "--depths", "0.5",
                 "--samples", "1", "--longbench_tasks", "hotpotqa", "--zeroscrolls_tasks", "qasper",
                 "--max_new_tokens", "3", "--chunk_size", "32", "--output_dir", str(out), "--quiet", *extra])


@pytest.fixture
def counted_answers(monkeypatch) -> list:
    calls = []
    for module in (tasks_cli, benchmark_cli):
        def counting(*args, _answer=module.answer_prompt, **kwargs):
            calls.append(1)
            return _answer(*args, **kwargs)

        monkeypatch.setattr(module, "answer_prompt", counting)
    return calls


def test_experiment_writes_tables_figures_and_results_and_resumes(tiny_model_dir, tmp_path, source, capsys,
                                                                   counted_answers):
    out = tmp_path / "experiment"
    assert _experiment(tiny_model_dir, out, "--source", str(source)) == 0
    units = len(METHODS) * 2 * 3  # methods x context sizes x (passkey, longbench hotpotqa, zeroscrolls qasper)
    assert len(counted_answers) == units
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == units
    assert {r["policy"] for r in records} == {"full", "sliding_window", "dynamickv", "rocketkv"}  # canonical
    assert {r["label"] for r in records} == set(METHODS)  # the names as the command line gave them
    bounded = [r for r in records if r["policy"] != "full"]
    target = {r["cache_bytes_target"] for r in bounded}
    assert len(target) == 1  # equal memory: every bounded method sized to one sliding window of 160 tokens
    assert all(r["cache_tokens_max"] <= 160 + 32 for r in bounded)  # budget + one prefill chunk
    full_passkey = {r["length"]: r["cache_bytes_max"] for r in records if r["policy"] == "full" and "length" in r}
    assert full_passkey[400] > full_passkey[300] > target.pop()  # the full cache grows with the context

    markdown = (out / "results.md").read_text()
    assert "Command: `streaming-llm experiment --model_name" in markdown
    assert "Context size = prompt length in tokens" in markdown and "skipped" not in markdown
    for name in ("memory_usage", "inference_time", "throughput", "accuracy"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"({name}.png)" in markdown
    assert "| method | context_size | synthetic | longbench | zeroscrolls |" in markdown
    for benchmark, task in (("synthetic", "passkey"), ("longbench", "hotpotqa"), ("zeroscrolls", "qasper")):
        assert f"| dynamic_kv | {benchmark} | {task} | 300 | 0 | 1 |" in markdown
    efficiency = (out / "efficiency.csv").read_text().splitlines()
    assert efficiency[0].startswith("method,policy,context_size,units") and len(efficiency) == 1 + len(METHODS) * 2
    assert (out / "accuracy.csv").read_text().startswith("method,benchmark,task,context_size,score,samples")
    assert str(out / "results.md") in capsys.readouterr().out

    counted_answers.clear()
    mtimes = sorted(p.stat().st_mtime_ns for p in (out / "records").glob("*.json"))
    assert _experiment(tiny_model_dir, out, "--source", str(source)) == 0
    assert counted_answers == [] and sorted(p.stat().st_mtime_ns for p in (out / "records").glob("*.json")) == mtimes


def test_unreachable_benchmarks_are_skipped_with_a_note(tiny_model_dir, tmp_path, monkeypatch):
    def offline(dataset, config, split):
        raise OSError(f"could not load {dataset!r}: the Hugging Face hub is unreachable")

    monkeypatch.setattr("streaming_llm.tasks.longbench._hub_rows", offline)
    out = tmp_path / "offline"
    assert main(["experiment", "--model_name", str(tiny_model_dir), "--methods", "full", "sliding_window",
                 "--context_sizes", "300", "--cache_budget", "64", "--synthetic_tasks", "needle", "--depths", "0.5",
                 "--samples", "1", "--max_new_tokens", "2", "--chunk_size", "64", "--output_dir", str(out),
                 "--quiet"]) == 0
    markdown = (out / "results.md").read_text()
    assert "**longbench skipped**: could not load 'THUDM/LongBench'" in markdown
    assert "**zeroscrolls skipped**: could not load 'tau/zero_scrolls'" in markdown
    assert "| full | synthetic | needle | 300 |" in markdown


def test_source_is_a_folder_of_benchmarks_or_name_equals_path(tmp_path, source):
    assert sources(Namespace(source=[str(source)])) == {
        "longbench": str(source / "longbench"), "zeroscrolls": str(source / "zeroscrolls")}
    assert sources(Namespace(source=[f"longbench={tmp_path}"])) == {"longbench": str(tmp_path), "zeroscrolls": None}
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="holds neither longbench/ nor zeroscrolls/"):
        sources(Namespace(source=[str(tmp_path / "elsewhere")]))


def test_api_model_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("streaming_llm.evaluation.jobs.load_model", no_loading)
    assert main(["experiment", "--use_api", "--api_model", "claude-x", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--use_api: the API model 'claude-x'" in err and "exposes no KV cache" in err
    assert not any(tmp_path.iterdir())


def test_module_entry_point_takes_the_seed_flags_and_refuses_api_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(streaming_llm.__file__).parents[1])}  # this tree, not an install
    result = subprocess.run([sys.executable, "-m", "streaming_llm.experiment", "--use_api", "--output_dir",
                             str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "exposes no KV cache" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--methods", "full", "dynamic-kv"], "--methods 'dynamic-kv': policy must be one of"),
    (["--methods", "rocket_kv:topk=0"], "--methods 'rocket_kv:topk=0': topk must be an integer >= 1"),
    (["--context_sizes", "8192"], r"--context_sizes must be an integer in \[1, 4096\]; got 8192"),
    (["--cache_budget", "0"], "--cache_budget must be an integer >= 1"),
    (["--depths", "2"], r"--depths must be numbers in \[0, 1\]"),
    (["--longbench_tasks", "nope"], "--longbench_tasks: unknown nope; allowed: narrativeqa"),
    (["--source", "/no/such/folder"], "--source '/no/such/folder': no such folder"),
    (["--source", "ruler=/tmp"], "'ruler' is not one of longbench, zeroscrolls"),
])
def test_bad_flags_fail_before_loading_with_the_flag_and_allowed_values(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr("streaming_llm.evaluation.jobs.load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["experiment", "--output_dir", str(tmp_path), "--methods", "full", *args]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err


def test_bad_benchmark_name_is_an_argparse_error_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", "--benchmarks", "ruler"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ruler'" in capsys.readouterr().err
