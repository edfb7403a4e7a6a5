"""The ``streaming-llm`` command on a tiny local model directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streaming_llm.cli import main

REQUIRED_KEYS = {"policy", "model", "text", "tokens", "ppl", "tok_per_s", "cache_tokens_max", "cache_bytes_max",
                 "peak_rss_bytes", "params"}


def _eval(model_dir, out, *extra):
    return main(["eval", "--model", str(model_dir), "--text", "builtin:dragons-blood", "--num-tokens", "96",
                 "--quiet", "--output-dir", str(out), *extra])


def test_eval_compares_policies_and_writes_reports(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = _eval(tiny_model_dir, out, "--json", "--policy", "full", "sliding_window", "streaming",
                 "--set", "sliding_window.window_size=16", "--set", "start_size=2", "--set", "recent_size=14")
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["policy"] for r in records] == ["full", "sliding_window", "streaming"]
    for record in records:
        assert REQUIRED_KEYS <= record.keys()
        assert record["tokens"] == 96
    full, window, sinks = records
    assert full["cache_tokens_max"] == 95
    assert window["cache_tokens_max"] == sinks["cache_tokens_max"] == 16
    assert window["cache_bytes_max"] == sinks["cache_bytes_max"] < full["cache_bytes_max"]
    assert sinks["params"]["start_size"] == 2 and sinks["params"]["recent_size"] == 14
    figures = {"ppl_stream.png", "ppl_vs_bytes.png", "speed_vs_bytes.png"}
    assert {p.name for p in out.iterdir()} == {"runs", "results.json", "results.csv", "results.md", *figures}
    assert len(list((out / "runs").glob("*.json"))) == 3
    report = (out / "results.md").read_text()
    assert "| streaming |" in report
    assert all(f"]({name})" in report for name in figures)  # the figures are embedded in the report


def test_rerun_reuses_records_and_force_reruns(tiny_model_dir, tmp_path, capsys, counted_runs):
    out = tmp_path / "run"
    _eval(tiny_model_dir, out, "--json", "--policy", "streaming:start_size=2,recent_size=10")
    first = json.loads(capsys.readouterr().out)
    assert counted_runs.calls == 1
    _eval(tiny_model_dir, out, "--json", "--policy", "streaming:start_size=2,recent_size=10")
    again = json.loads(capsys.readouterr().out)
    assert again["seconds"] == first["seconds"] and again == first  # the record, read back
    assert counted_runs.calls == 1  # reused, not rerun
    _eval(tiny_model_dir, out, "--json", "--force", "--policy", "streaming:start_size=2,recent_size=10")
    json.loads(capsys.readouterr().out)
    assert counted_runs.calls == 2  # --force ran it again


def test_chunked_eval_prints_a_table(tiny_model_dir, tmp_path, capsys):
    assert _eval(tiny_model_dir, tmp_path, "--chunk-size", "8", "--policy", "streaming:recent_size=20") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["policy", "params", "tokens", "ppl"]


@pytest.mark.parametrize("args,message", [
    (["--policy", "nope"], "policy must be one of"),
    (["--policy", "streaming", "--set", "window_size=3"], "no selected policy has parameter 'window_size'"),
    (["--policy", "streaming", "--set", "full.recent_size=3"], "policy 'full' is not among --policy"),
    (["--policy", "streaming:recent_size"], "KEY=VALUE"),
    (["--policy", "streaming", "--chunk-size", "0"], "--chunk-size must be an integer >= 1"),
    (["--policy", "streaming", "--text", "builtin:missing"], "text must be a file path or one of"),
])
def test_bad_input_exits_2_with_a_clear_message(tiny_model_dir, tmp_path, capsys, args, message):
    assert main(["eval", "--model", str(tiny_model_dir), "--num-tokens", "16", "--quiet", *args]) == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_lists_policies():
    out = subprocess.run([sys.executable, "-m", "streaming_llm", "policies"], capture_output=True, text=True, check=True)
    assert "streaming" in out.stdout and "recent_size" in out.stdout


def test_quiet_keeps_policy_log_lines_out_of_the_console_but_in_the_record(tiny_model_dir, tmp_path):
    """A run lowers the streaming_llm logger to INFO to record ADMS's lines; --quiet must still
    keep them (and every other INFO line) off stderr."""
    command = [sys.executable, "-m", "streaming_llm", "eval", "--model", str(tiny_model_dir), "--num-tokens", "48",
               "--policy", "adms:start_size=2,enable_dynamic_sink=false,recent_size=8,compressed_budget=8,log_every=16",
               "--output-dir", str(tmp_path), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "[ADMS" not in result.stderr and "INFO" not in result.stderr
    (record_path,) = (tmp_path / "runs").glob("*.json")
    assert any(line.startswith("[ADMS Stats @ 16]") for line in json.loads(record_path.read_text())["log"])
