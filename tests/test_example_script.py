"""examples/eval_adms_vs_streaming.py: the seed's flags reach the configs; a run writes the seed's files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "eval_adms_vs_streaming.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("eval_adms_vs_streaming", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEED_FLAGS = ["--model_name_or_path", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--dataset_name", "wikitext",
              "--task", "wikitext-2-raw-v1", "--split", "validation", "--num_samples", "32",
              "--num_eval_tokens", "4096", "--concat_stream", "--start_size", "8", "--recent_size", "1024",
              "--compressed_budget", "192", "--importance_ratio", "0.8", "--importance_metric", "mixed",
              "--compression_interval", "32", "--svd_max_tokens", "384", "--coverage_priority", "0",
              "--use_adaptive_budget", "--output_dir", "outputs/x"]


def test_every_seed_flag_reaches_the_configs(script):
    args = script.build_parser().parse_args(SEED_FLAGS)
    streaming, adms = script.jobs_from_args(args)
    source = adms.source
    assert (source.model, source.dataset, source.dataset_config, source.split) == (
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "wikitext", "wikitext-2-raw-v1", "validation")
    assert (source.num_samples, source.num_tokens, source.concat_stream, source.text) == (32, 4096, True, None)
    config = adms.spec.config()
    assert (config.start_size, config.recent_size, config.compressed_budget) == (8, 1024, 192)
    assert (config.importance_ratio, config.importance_metric, config.compression_interval) == (0.8, "mixed", 32)
    assert (config.svd_max_tokens, config.coverage_priority, config.use_adaptive_budget) == (384, 0.0, True)
    assert streaming.spec.config().start_size == 8 and streaming.spec.config().recent_size == 1024
    assert adms.equal_memory_to is None  # the seed's setting unless --equal_memory


def test_defaults_are_the_seed_defaults_and_offline(script):
    args = script.build_parser().parse_args([])
    streaming, adms = script.jobs_from_args(args)
    assert adms.source.text is None and adms.source.dataset is None  # the shipped default book
    config = adms.spec.config()
    assert (config.compressed_budget, config.importance_ratio, config.enable_dynamic_sink) == (128, 0.5, True)
    assert config.log_every == 512
    assert streaming.spec.config().enable_dynamic_sink is True  # both policies get the same sinks


@pytest.mark.parametrize("flags,message", [
    (["--importance_metric", "nope"], "invalid choice"),
    (["--compressed_budget", "many"], "invalid int value"),
])
def test_bad_flags_are_refused(script, capsys, flags, message):
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(flags)
    assert message in capsys.readouterr().err


def test_head_to_head_run_writes_summary_and_readable_stats(script, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "h2h"
    code = script.main(["--model_name_or_path", str(tiny_model_dir), "--dataset_name", "builtin:dragons-blood",
                        "--num_eval_tokens", "64", "--chunk_size", "4", "--start_size", "2", "--recent_size", "16",
                        "--compressed_budget", "8", "--rank", "2", "--compression_interval", "4",
                        "--no-enable_dynamic_sink", "--log_every", "32", "--equal_memory", "--with_full",
                        "--sketch_budget", "2", "--replay_budget", "1", "--calibration_window", "4",
                        "--output_dir", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["policy"]: row for row in summary["comparison"]}
    assert set(rows) == {"full", "streaming", "adms"}
    assert rows["adms"]["cache_bytes_max"] <= rows["streaming"]["cache_bytes_max"]  # --equal_memory
    assert rows["adms"]["improvement_pct"] == pytest.approx(
        100 * (rows["streaming"]["ppl"] - rows["adms"]["ppl"]) / rows["streaming"]["ppl"])
    readable = (out / "readable.txt").read_text()
    assert "[ADMS Stats @ 32] Avg per head: exact=" in readable and "[ADMS Cache @ 32] Actual size:" in readable
    assert "results.md" in capsys.readouterr().out
    assert script.main(["--model_name_or_path", str(tiny_model_dir), "--dataset_name", "builtin:nope",
                        "--output_dir", str(out), "--quiet"]) == 2
