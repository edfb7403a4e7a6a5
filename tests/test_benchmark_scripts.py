"""The soak script and our side of the peer benchmark, on the tiny model (kvpress's side needs its
own venv: benchmarks/peers/setup.sh)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(path: Path, name: str):
    """A script of benchmarks/ as a module (they are run as files, not installed)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up; peers.py imports `engines`
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


soak = _module(REPO / "benchmarks" / "soak.py", "soak")
engines = _module(REPO / "benchmarks" / "peers" / "engines.py", "engines")
peers = _module(REPO / "benchmarks" / "peers" / "peers.py", "peers")
distractors = _module(REPO / "benchmarks" / "needle_distractors.py", "needle_distractors")


def _sample(tokens, cache, rss, finite=True):
    return {"tokens": tokens, "cache_bytes": cache, "rss_bytes": rss, "finite": finite}


def test_soak_verdicts():
    steady = [_sample(0, 10, 100), _sample(10, 50, 200), _sample(20, 50, 204), _sample(30, 50, 209)]
    verdict = soak.judge(steady, warmup=10, rss_tolerance=0.05)
    assert verdict["cache_constant"] and verdict["rss_ok"] and verdict["finite"]
    assert verdict["rss_growth"] == pytest.approx(9 / 200)
    growing = soak.judge([*steady, _sample(40, 51, 211, finite=False)], warmup=10, rss_tolerance=0.05)
    assert not growing["cache_constant"] and not growing["rss_ok"] and not growing["finite"]
    assert soak.judge(steady, warmup=100, rss_tolerance=0.05) == {"finite": True, "warm": False}


def test_soak_runs_each_policy_in_a_child_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "soak"
    command = [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--model", str(tiny_model_dir),
               "--policies", "tova", "--tokens", "400", "--warmup", "100", "--sample-every", "50",
               "--chunk-size", "25", "--slots", "32", "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    records = {r["policy"]: r for r in map(lambda p: json.loads(p.read_text()), (out / "runs").glob("*.json"))}
    assert sorted(records) == ["tova"], first.stderr[-2000:]
    for record in records.values():
        assert record["samples"][-1]["tokens"] == 400 and record["finite"] and record["cache_constant"]
        assert record["cache_bytes_after_warmup"][0] > 0
        assert "MALLOC_MMAP_THRESHOLD_=131072" in record["allocator"]  # the RSS check depends on it: recorded
    assert "| tova | 400 |" in (out / "soak.md").read_text()
    assert first.returncode == (0 if all(r["passed"] for r in records.values()) else 1)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == first.returncode
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps  # reused, not rerun


def test_our_side_of_the_peer_benchmark_holds_kvpress_kept_bytes(tiny_llama):
    ids = tuple(range(3, 131))
    cell = engines.Cell("answer", ids[:120], ids[120:], max_new_tokens=3)
    result = engines.run_ours(tiny_llama, "streaming", 0.75, cell, stop=(), chunk_size=16)
    assert result["kept_tokens"] == 30 and len(result["tokens"]) == 3
    kv_bytes_per_token = 2 * 2 * 16 * 4 * tiny_llama.config.num_hidden_layers  # K+V, 2 KV heads, D=16, fp32
    assert result["cache_bytes_end"] <= 30 * kv_bytes_per_token  # equal resident bytes: positions count too
    assert result["prefill_seconds"] > 0 and result["decode_seconds"] > 0
    ppl = engines.run_ours(tiny_llama, "h2o", 0.5, engines.Cell("continuation", ids[:100], continuation_ids=ids[100:]),
                           stop=(), chunk_size=16)
    assert len(ppl["nll"]) == 27 and ppl["cache_bytes_max"] <= 50 * kv_bytes_per_token


def test_peer_units_and_table():
    args = peers.parse_args(["--methods", "full", "streaming", "kvpress-knorm", "--lengths", "2048", "--samples", "2",
                             "--ratios", "0.5", "0.9"])
    units = peers.units(args)
    # full once, the others at each ratio; 2 needle + 2 passkey + 3 books each
    assert len(units) == (1 + 2 * 2) * (2 + 2 + 3)
    records = [{**u, "side": peers.side(u["method"]), "peak_rss_delta_bytes": 2**20, "prefill_seconds": 2.048,
                "decode_seconds": 0.1, **({"nll": [0.0, 2.0]} if u["task"] == "ppl" else
                                           {"score": 1.0, "generated_tokens": 10})} for u in units]
    text = peers.table(records, [2048], "cmd")
    assert "| ours | streaming | 0.5 | 2/2 | 2/2 | 2.72 | 1 | 1.00 | 10.0 |" in text
    assert "| kvpress-knorm | 0.9 | 2048 | 2.72 | 2.72 | 2.72 |" in text
    retrieval_only = peers.table([r for r in records if r["task"] != "ppl"], [2048], "cmd")
    assert "| ours | streaming | 0.5 | 2/2 | 2/2 | – |" in retrieval_only and "PPL per book" not in retrieval_only
    with pytest.raises(ValueError, match="--methods: 'nope'"):
        peers.plan(peers.parse_args(["--methods", "nope"]))


def test_needle_distractors_count_the_key_word_outside_the_needle_only(tiny_model_dir):
    from transformers import AutoTokenizer

    from streaming_llm.tasks import SyntheticTaskConfig, build_sample

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = SyntheticTaskConfig(task="needle")
    filler = tokenizer(" The cart rolled on along the dusty road." * 60, add_special_tokens=False)["input_ids"]

    def sample_over(opening: str):
        ids = tokenizer(opening, add_special_tokens=False)["input_ids"] + filler
        probe = build_sample(config, tokenizer, ids, length=1200, depth=0.5)
        # A haystack of exactly the filler's length is read whole, from its first token.
        length = probe.prompt.context_length - len(probe.needle.ids)
        return build_sample(config, tokenizer, ids[:length], length=1200, depth=0.5)

    clean = sample_over("")
    word = clean.key
    assert word in clean.needle.text  # the needle's own mention is not counted
    assert distractors.key_word_mentions(clean, tokenizer) == 0
    planted = sample_over(f"An {word} fell. Two {word.upper()}S rolled.")
    assert distractors.key_word_mentions(planted, tokenizer) == 2


def test_soak_report_of_an_interrupted_run(tmp_path):
    args = ["--policies", "streaming", "tova", "--tokens", "1000", "--warmup", "10", "--output-dir", str(tmp_path)]
    from streaming_llm.runs import job_key, write_json

    key = job_key("soak-streaming", soak.definition(soak.parse_args(args), "streaming"))
    samples = [_sample(10, 50, 200), _sample(20, 50, 201)]
    write_json(tmp_path / "progress" / f"{key}.json", {"policy": "streaming", "tokens_reached": 20,
                                                           "samples": [{**s, "seconds": 1.0} for s in samples]})
    assert soak.main([*args, "--report-only"]) == 1  # nothing finished: not a pass
    table = (tmp_path / "soak.md").read_text()
    assert "| streaming | 20 | 50..50 | True |" in table and "unfinished (20 of 1000 tokens)" in table
    assert "| tova |" not in table  # never started


atskv_summary = _module(REPO / "benchmarks" / "atskv_summary.py", "atskv_summary")


def _ppl(policy, ppl):
    return {"policy": policy, "ppl": ppl, "params": {}, "cache_bytes_max": 1}


@pytest.mark.parametrize("full,expected", [(10.0, "+0.50"), (30.0, "n/a (full worse)")])
def test_atskv_summary_closure_is_defined_only_where_the_full_cache_beats_streaming(full, expected):
    rows = atskv_summary.book_rows([_ppl("full", full), _ppl("streaming", 20.0), _ppl("atskv", 15.0)])
    assert rows[-1].endswith(f"| -25.0% | {expected} |")
