"""Sweeps: grid files, resumable runs, reports and figures, the seed's shell wrapper, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming_llm.cli import main
from streaming_llm.adms_cache import ADMSConfig
from streaming_llm.report.comparison import compare
from streaming_llm.report.plots import pareto_front, windowed_ppl
from streaming_llm.sweep import load_grid, run_sweep
from streaming_llm.sweep.grid import jobs_for, parse_scenario_line, split_scenario_lines

REPO = Path(__file__).resolve().parents[1]

GRID_TOML = """
[defaults]
chunk_size = {chunk}
scenarios = ["dragons", "pioneer"]

[scenarios.dragons]
model = "{model}"
text = "builtin:dragons-blood"
tokens = {tokens}
log_every = 32

[scenarios.pioneer]
model = "{model}"
text = "builtin:pioneer-days"
tokens = {tokens}

[profiles.balanced]
equal_memory_to = "streaming"
policies = ["full", "streaming:start_size=2,recent_size=14",
            "adms:start_size=2,enable_dynamic_sink=false,compressed_budget=8,importance_ratio=1.0,compression_interval=4"]

[profiles.quality]
equal_memory_to = "streaming"
policies = ["full", "streaming:start_size=2,recent_size=14",
            {{ policy = "adms", start_size = 2, enable_dynamic_sink = false, compressed_budget = 8, compression_interval = 4, rank = 2 }}]
"""

GRID_YAML = """
defaults: {{chunk_size: {chunk}, scenarios: [dragons, pioneer]}}
scenarios:
  dragons: {{model: "{model}", text: "builtin:dragons-blood", tokens: {tokens}, log_every: 32}}
  pioneer: {{model: "{model}", text: "builtin:pioneer-days", tokens: {tokens}}}
profiles:
  balanced:
    equal_memory_to: streaming
    policies: ["full", "streaming:start_size=2,recent_size=14",
               "adms:start_size=2,enable_dynamic_sink=false,compressed_budget=8,importance_ratio=1.0,compression_interval=4"]
  quality:
    equal_memory_to: streaming
    policies:
      - full
      - "streaming:start_size=2,recent_size=14"
      - {{policy: adms, start_size: 2, enable_dynamic_sink: false, compressed_budget: 8, compression_interval: 4, rank: 2}}
"""


def write_grid(path: Path, model_dir, tokens: int = 64, chunk: int = 4, template: str = GRID_TOML) -> Path:
    path.write_text(template.format(model=model_dir, tokens=tokens, chunk=chunk))
    return path


def test_toml_and_yaml_grids_define_the_same_jobs(tiny_model_dir, tmp_path):
    toml_grid = load_grid(str(write_grid(tmp_path / "g.toml", tiny_model_dir)))
    yaml_grid = load_grid(str(write_grid(tmp_path / "g.yaml", tiny_model_dir, template=GRID_YAML)))
    keys = [[j.key for s in g.select()[0] for p in g.select()[1] for j in jobs_for(s, p)]
            for g in (toml_grid, yaml_grid)]
    assert keys[0] == keys[1] and len(keys[0]) == 12
    # full and streaming are shared by the two profiles of a scenario: 2 x (2 + 2 adms) unique runs
    assert len(set(keys[0])) == 8


def test_scenario_overrides_reach_the_policies_that_have_them(tiny_model_dir, tmp_path):
    grid = load_grid(str(write_grid(tmp_path / "g.toml", tiny_model_dir)))
    jobs = jobs_for(grid.scenarios["dragons"], grid.profiles["balanced"])
    params = {j.spec.policy: j.definition()["params"] for j in jobs}
    assert params["adms"]["log_every"] == 32 and "log_every" not in params["streaming"]
    assert params["adms"]["importance_ratio"] == 1.0
    adms = next(j for j in jobs if j.spec.policy == "adms")
    assert adms.equal_memory_to.policy == "streaming"
    assert all(j.equal_memory_to is None for j in jobs if j.spec.policy != "adms")  # reference and full unsized


def test_a_profile_can_fix_the_cache_bytes(tiny_model_dir, tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(f"""
[scenarios.s]
model = "{tiny_model_dir}"
tokens = 40
[profiles.fixed]
cache_bytes = 20000
policies = ["full", "streaming:start_size=2", "h2o"]
""")
    grid = load_grid(str(path))
    jobs = jobs_for(grid.scenarios["s"], grid.profiles["fixed"])
    assert [j.cache_bytes for j in jobs] == [None, 20000, 20000]
    outcome = run_sweep(grid, tmp_path / "out", progress=False)
    records = _records(tmp_path / "out")
    assert outcome.ran == 3
    bounded = [r for r in records.values() if r["policy"] != "full"]
    assert all(r["cache_bytes_target"] == 20000 and r["cache_bytes_max"] <= 20000 for r in bounded)
    assert max(r["cache_bytes_max"] for r in bounded) > 20000 * 0.8  # sized up to the target, not far below


def test_seed_scenario_lines_parse():
    line = ("name=llama3_8k model=meta-llama/Meta-Llama-3-8B-Instruct dataset=wikitext task=wikitext-103-raw-v1 "
            "split=test samples=64 tokens=8192 log_every=512")
    assert parse_scenario_line(line) == {
        "name": "llama3_8k", "model": "meta-llama/Meta-Llama-3-8B-Instruct", "dataset": "wikitext",
        "task": "wikitext-103-raw-v1", "split": "test", "samples": 64, "tokens": 8192, "log_every": 512}
    # SCENARIOS=("name=a ..." "name=b ...") reaches a script as one string, parentheses and all
    assert split_scenario_lines("(name=a model=m tokens=8 name=b model=n)") == ["name=a model=m tokens=8",
                                                                              "name=b model=n"]
    assert split_scenario_lines("smollm2_4k gemma3_4k") == ["smollm2_4k", "gemma3_4k"]
    grid = load_grid("builtin:adms_report")
    scenario = grid.scenario_from_line(line)
    assert scenario.source.dataset_config == "wikitext-103-raw-v1" and scenario.source.num_samples == 64
    assert scenario.settings.chunk_size == 32 and scenario.uses_hub  # the grid's defaults apply


@pytest.mark.parametrize("text,message", [
    ("[profiles.p]\npolicies = ['nope']\n", "policy must be one of"),
    ("[profiles.p]\npolicies = ['streaming']\nequal_memory_to = 'h2o'\n", "equal_memory_to='h2o' names no policy"),
    ("[profiles.p]\npolicies = ['streaming']\nbudget = 3\n", "unknown key(s) budget"),
    ("[scenarios.s]\ntokenz = 3\n[profiles.p]\npolicies = ['streaming']\n", "unknown key(s) tokenz"),
    ("[scenarios.s]\ntokens = 1\n[profiles.p]\npolicies = ['streaming']\n", "num_tokens must be an integer >= 2"),
    ("[defaults]\nprofiles = ['q']\n[profiles.p]\npolicies = ['streaming']\n", "unknown profile 'q'"),
    ("[profiles.p]\npolicies = ['streaming']\ncache_bytes = 0\n", "cache_bytes must be an integer >= 1"),
])
def test_bad_grids_raise_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_grid(str(path))


def test_builtin_grid_is_valid():
    grid = load_grid("builtin:adms_report")
    scenarios, profiles = grid.select()
    assert [s.name for s in scenarios] == ["smollm2_4k", "gemma3_4k"]
    assert not any(s.uses_hub for s in scenarios)
    assert {"tinyllama_2k", "opt13b_2k", "llama3_8k"} <= set(grid.scenarios)
    assert [p.name for p in profiles] == ["balanced", "quality"]


def _records(root: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))}


def test_sweep_writes_reports_and_figures_and_resumes(tiny_model_dir, tmp_path, counted_runs):
    grid = load_grid(str(write_grid(tmp_path / "g.toml", tiny_model_dir, tokens=48)))
    root = tmp_path / "out"
    outcome = run_sweep(grid, root, progress=False)
    assert (outcome.ran, outcome.reused, outcome.failures) == (8, 0, {})
    for scenario in ("dragons", "pioneer"):
        for profile in ("balanced", "quality"):
            pair = root / scenario / profile
            summary = json.loads((pair / "summary.json").read_text())
            assert [r["policy"] for r in summary["comparison"]] == ["full", "streaming", "adms"]
            assert (pair / "readable.txt").is_file() and (pair / "ppl_stream.png").stat().st_size > 0
    assert "[ADMS Stats @ 32]" in (root / "dragons" / "balanced" / "readable.txt").read_text()
    report = (root / "report.md").read_text()
    assert report.count("| dragons | balanced |") == 3 and "plots/pioneer/ppl_vs_bytes.png" in report
    assert (root / "plots" / "dragons" / "speed_vs_bytes.png").is_file()
    csv_lines = (root / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scenario,profile,model,text,tokens,context,policy") and len(csv_lines) == 13
    # every bounded run of a profile holds at most the reference's bytes
    for record in _records(root).values():
        if record["policy"] == "adms":
            assert record["cache_bytes_max"] <= record["cache_bytes_target"]

    before, streams_run = _records(root), counted_runs.calls
    again = run_sweep(grid, root, progress=False)
    assert (again.ran, again.reused, again.skipped_pairs) == (0, 8, 4)
    assert _records(root) == before and counted_runs.calls == streams_run  # nothing redone

    forced = run_sweep(grid, root, profiles=["balanced"], force=True, progress=False)
    assert forced.ran == 6  # full, streaming, adms in two scenarios
    assert counted_runs.calls == streams_run + 6  # each rerun streamed again


def test_killed_sweep_resumes_without_redoing_finished_runs(tiny_model_dir, tmp_path):
    grid_path = write_grid(tmp_path / "g.toml", tiny_model_dir, tokens=240, chunk=1)
    root = tmp_path / "out"
    command = [sys.executable, "-m", "streaming_llm", "sweep", str(grid_path), "--output-root", str(root),
               "--profiles", "balanced", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((root / "runs").glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = _records(root)
    assert 1 <= len(finished) < 6, "the kill should land mid-sweep"
    assert not list((root / "runs").glob(".*.tmp"))  # atomic writes leave no partial records
    outcome = run_sweep(load_grid(str(grid_path)), root, profiles=["balanced"], progress=False)
    assert outcome.reused == len(finished) and outcome.ran == 6 - len(finished)
    resumed = _records(root)
    assert all(resumed[name] == record for name, record in finished.items())


def test_sweep_command_and_seed_shell_script(tiny_model_dir, tmp_path):
    grid_path = write_grid(tmp_path / "g.toml", tiny_model_dir, tokens=32)
    root = tmp_path / "cli"
    assert main(["sweep", str(grid_path), "--output-root", str(root), "--profiles", "balanced",
                 "--scenarios", "pioneer", "--quiet"]) == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["pioneer", "plots", "runs"]
    assert main(["sweep", str(grid_path), "--output-root", str(root), "--profiles", "nope", "--quiet"]) == 2

    env = {**os.environ, "GRID": str(grid_path), "OUTPUT_ROOT": str(tmp_path / "sh"), "PROFILES": "(quality)",
           "SCENARIOS": f'("name=extra model={tiny_model_dir} text=builtin:dragons-blood tokens=24")'}
    script = [str(REPO / "scripts" / "run_adms_report.sh"), "--quiet"]
    first = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "3 run(s) done, 0 reused" in first.stdout
    summary = tmp_path / "sh" / "extra" / "quality" / "summary.json"
    assert json.loads(summary.read_text())["tokens"] == 24
    second = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=300)
    assert "0 run(s) done, 3 reused" in second.stdout
    forced = subprocess.run(["bash", *script], env={**env, "FORCE_RERUN": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert "3 run(s) done, 0 reused" in forced.stdout


def test_failed_runs_are_reported_and_do_not_stop_the_sweep(tiny_model_dir, tmp_path):
    grid_path = write_grid(tmp_path / "g.toml", tiny_model_dir, tokens=32)
    grid = load_grid(str(grid_path))
    missing = grid.scenario_from_line(f"name=broken model={tmp_path / 'no-such-model.gguf'} tokens=32")
    outcome = run_sweep(grid, tmp_path / "out", scenarios=["pioneer"], profiles=["balanced"],
                        extra_scenarios=[missing], progress=False)
    assert outcome.ran == 3 and len(outcome.failures) == 3
    assert all("GGUF file not found" in e for e in outcome.failures.values())
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert {f["labels"]["scenario"] for f in failures} == {"broken"}


def test_ray_sweep_gives_the_sequential_records(tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    from streaming_llm.sweep.ray_executor import RayExecutor

    grid = load_grid(str(write_grid(tmp_path / "g.toml", tiny_model_dir, tokens=32)))
    run_sweep(grid, tmp_path / "seq", profiles=["quality"], progress=False)
    outcome = run_sweep(grid, tmp_path / "ray", profiles=["quality"], executor=RayExecutor(num_cpus=2),
                        progress=False)
    assert outcome.ran == 6 and not outcome.failures
    sequential, distributed = _records(tmp_path / "seq"), _records(tmp_path / "ray")
    assert sequential.keys() == distributed.keys()
    for name, record in sequential.items():
        other = distributed[name]
        for field in ("params", "log", "cache_tokens_max", "cache_bytes_max", "cache_bytes_target"):
            assert other.get(field) == record.get(field), (name, field)
        # Ray workers may use another number of threads: float sums can differ in the last bits
        assert other["nll"] == pytest.approx(record["nll"], rel=1e-5, abs=1e-6), name
        assert other["ppl"] == pytest.approx(record["ppl"], rel=1e-6), name


def test_comparison_metrics_match_hand_computed_values():
    records = [
        {"policy": "full", "ppl": 10.0, "tok_per_s": 50.0, "params": {}},
        {"policy": "streaming", "ppl": 14.0, "tok_per_s": 100.0, "params": {"recent_size": 8}},
        {"policy": "adms", "ppl": 12.0, "tok_per_s": 80.0, "params": {"compressed_budget": 4, "rank": 16}},
    ]
    rows = compare(records)
    assert rows[2]["improvement_pct"] == pytest.approx(100 * 2 / 14)
    assert rows[2]["gap_closure"] == pytest.approx(0.5)
    assert rows[2]["speed_x"] == pytest.approx(0.8)
    assert rows[1]["gap_closure"] == 0 and rows[0]["gap_closure"] == pytest.approx(1.0)
    assert compare(records[2:])[0]["improvement_pct"] is None  # no baseline, no made-up numbers


def test_table_rows_show_every_parameter_that_differs_from_the_default():
    """Two runs that differ only in a parameter outside the sizing ones must not read alike."""
    base = ADMSConfig(start_size=4, recent_size=252, enable_dynamic_sink=False).to_dict()
    records = [{"policy": "adms", "ppl": 1.0, "tok_per_s": 1.0, "params": base},
               {"policy": "adms", "ppl": 1.0, "tok_per_s": 1.0, "params": {**base, "enable_dynamic_sink": True}}]
    first, second = (row["params"] for row in compare(records))
    assert first["enable_dynamic_sink"] is False and "enable_dynamic_sink" not in second
    assert first["compressed_budget"] == 128 and "svd_max_tokens" not in first  # sizing shown, defaults not


def test_pareto_front_and_windowed_ppl():
    points = [(10, 5.0), (20, 6.0), (20, 4.0), (40, 4.5), (80, 3.0)]
    assert pareto_front(points) == [(10, 5.0), (20, 4.0), (80, 3.0)]
    assert pareto_front(points, lower_is_better=False) == [(10, 5.0), (20, 6.0)]
    ends, values = windowed_ppl([0.0, 0.0, 2.0, 2.0, 1.0], window=2)
    assert ends == [2, 4] and values == pytest.approx([1.0, 2.718281828 ** 2])
