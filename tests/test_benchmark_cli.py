"""``streaming-llm benchmark`` end to end: the tiny model answers local LongBench and ZeroSCROLLS
folders (never the network); records resume, reports are written, bad input fails cleanly."""

from __future__ import annotations

import json

import pytest

import streaming_llm.tasks.benchmark_cli as benchmark_cli
from streaming_llm.cli import main
from streaming_llm.data import load_text
from streaming_llm.tasks.longbench import load_longbench, load_zeroscrolls

POLICIES = ["full", "streaming:start_size=4,recent_size=60"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Any path that reached for the hub would fail fast instead of downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A LongBench folder (``data.zip``'s layout, flattened) and a ZeroSCROLLS one, two long examples each."""
    root = tmp_path_factory.mktemp("benchmarks")
    book = load_text("builtin:pioneer-days")
    _write_jsonl(root / "longbench" / "hotpotqa.jsonl", [
        {"input": f"Who met Bob on day {i}?", "context": book[i * 4000 : i * 4000 + 3000] + " Alice met Bob.",
         "answers": ["Alice"], "all_classes": None, "_id": f"lb{i}", "length": 600}
        for i in range(2)
    ])
    _write_jsonl(root / "zeroscrolls" / "qasper" / "validation.jsonl", [
        {"id": f"zs{i}", "input": "Read the article and answer.\n\n" + book[i * 4000 : i * 4000 + 3000]
         + "\n\nQuestion: what is the article about?\nAnswer:", "output": "a pioneer family"}
        for i in range(2)
    ])
    return {"longbench": (root / "longbench", "hotpotqa", load_longbench, "qa_f1"),
            "zeroscrolls": (root / "zeroscrolls", "qasper", load_zeroscrolls, "f1")}


def _benchmark(model_dir, out, *extra):
    return main(["benchmark", "--model", str(model_dir), "--policies", *POLICIES, "--samples", "2",
                 "--max-length", "256", "--max-new-tokens", "4", "--chunk-size", "64", "--output-dir", str(out),
                 "--quiet", *extra])


@pytest.mark.parametrize("benchmark", ["longbench", "zeroscrolls"])
def test_benchmark_command_writes_records_reports_and_resumes(tiny_model_dir, tmp_path, capsys, monkeypatch,
                                                              sources, benchmark):
    source, task, load, metric = sources[benchmark]
    calls = []

    def counting_answer(*args, **kwargs):
        calls.append(1)
        return answer_prompt(*args, **kwargs)

    answer_prompt = benchmark_cli.answer_prompt
    monkeypatch.setattr(benchmark_cli, "answer_prompt", counting_answer)
    out = tmp_path / "bench"
    argv = ["--benchmark", benchmark, "--tasks", task, "--source", str(source)]
    assert _benchmark(tiny_model_dir, out, *argv) == 0
    assert len(calls) == 2 * 2
    console = capsys.readouterr().out
    assert "policy" in console and "metric" in console and str(out / "results.md") in console

    paths = sorted((out / "records").glob("*.json"))
    records = [json.loads(p.read_text()) for p in paths]
    assert len(records) == 2 * 2
    assert {(r["label"], r["index"]) for r in records} == {(p, i) for p in POLICIES for i in (0, 1)}
    examples = load(task, str(source))
    for record in records:
        assert {"params", "example_id", "model", "max_length", "chunk_size", "dtype", "device", "cache_bytes_target",
                "answers", "prompt_tokens", "generated_tokens", "prefill_seconds", "decode_seconds",
                "cache_tokens_max", "cache_bytes_max", "versions"} <= record.keys()
        example = examples[record["index"]]
        assert (record["benchmark"], record["task"], record["example_id"]) == (benchmark, task, example.id)
        assert record["score"] == example.score(record["prediction"])
        assert record["metric"] == metric and record["answers"] == list(example.answers)
        assert record["prompt_tokens"] == 256  # the long contexts were cut in the middle
        assert record["generated_tokens"] <= 4
    streaming = [r for r in records if r["policy"] == "streaming"]
    assert all(r["cache_tokens_max"] <= 64 + 64 for r in streaming)  # budget + one prefill chunk

    markdown = (out / "results.md").read_text()
    assert f"Command: `streaming-llm benchmark --model {tiny_model_dir}" in markdown
    assert f"--benchmark {benchmark} --tasks {task} --source {source}" in markdown
    assert "| policy | benchmark | task | metric | score | samples |" in markdown
    assert f"| full | {benchmark} | {task} | {metric} |" in markdown and "![score per task and policy](scores.png)" in markdown
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "policy,benchmark,task,metric,score,samples" and len(csv_lines) == 1 + 2
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun reuses every record without calling the model; --force answers again.
    mtimes = [p.stat().st_mtime_ns for p in paths]
    calls.clear()
    assert _benchmark(tiny_model_dir, out, *argv) == 0
    assert calls == [] and [p.stat().st_mtime_ns for p in paths] == mtimes
    assert _benchmark(tiny_model_dir, out, *argv, "--force") == 0
    assert len(calls) == 2 * 2 and sorted((out / "records").glob("*.json")) == paths


@pytest.mark.parametrize("args,message", [
    (["--benchmark", "nope", "--tasks", "hotpotqa"], "benchmark must be one of longbench, zeroscrolls; got 'nope'"),
    (["--tasks", "hotpotqa", "nope"], "tasks must be longbench tasks (narrativeqa, qasper,"),
    (["--benchmark", "zeroscrolls", "--tasks", "hotpotqa"], "tasks must be zeroscrolls tasks (gov_report,"),
    (["--tasks", "hotpotqa", "--max-length", "0"], "max_length must be an integer >= 1; got 0"),
    (["--tasks", "hotpotqa", "--chunk-size", "0"], "chunk_size must be an integer >= 1; got 0"),
    (["--tasks", "hotpotqa", "--policies", "nope"], "policy must be one of"),
])
def test_bad_input_fails_before_the_model_loads(tmp_path, capsys, args, message):
    # The model path does not exist: each error must come from checking the arguments first.
    code = main(["benchmark", "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "no-model" not in err


@pytest.mark.parametrize("source,message", [
    ("{tmp}/missing", "no such file or folder: {tmp}/missing"),
    ("nobody/no-such-benchmark", "nobody/no-such-benchmark"),  # a hub id, offline: [datasets] missing or unreachable
])
def test_missing_source_is_a_one_line_error(tmp_path, capsys, source, message):
    source, message = source.format(tmp=tmp_path), message.format(tmp=tmp_path)
    code = main(["benchmark", "--model", str(tmp_path / "no-model"), "--tasks", "hotpotqa", "--source", source,
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("streaming-llm: error: ") and message in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
