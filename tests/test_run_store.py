"""The one run store: job ids, the atomic writer, the record validator and the resume rule, as
eval, sweep, tasks and benchmark use them; tasks with --set, a grid and Ray."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

from streaming_llm.cli import main
from streaming_llm.evaluation.jobs import Job, StreamSource, eval_store
from streaming_llm.evaluation.runs import RunSpec, compact_definition
from streaming_llm.runs import RecordError, RunStore, job_key, read_record, replacing, write_atomic


def test_job_key_is_stable_and_keeps_the_eval_record_names():
    assert job_key("x", {"a": 1, "b": [1, 2]}) == job_key("x", {"b": [1, 2], "a": 1})
    assert job_key("x", {"a": 1}) != job_key("x", {"a": 2})
    job = Job(StreamSource(num_tokens=64), RunSpec.parse("streaming:recent_size=8"))
    # the formula records were written under before the run store: their files are still found
    blob = json.dumps(job.definition(), sort_keys=True, default=str).encode()
    assert job.key == f"streaming-{hashlib.sha256(blob).hexdigest()[:16]}"


def test_a_key_hashes_only_the_parameters_that_differ_from_the_defaults():
    def key(spec):
        return Job(StreamSource(num_tokens=64), RunSpec.parse(spec), equal_memory_to=RunSpec.parse(spec)).key

    # a parameter added later, at its default, must not re-key every earlier record
    assert key("streaming+memory:recent_size=80") == key("streaming+memory:recent_size=80,memory_query_centering=none")
    assert key("streaming:recent_size=8") == key("streaming:recent_size=8,start_size=4")
    assert key("streaming:recent_size=8") != key("streaming:recent_size=8,start_size=2")
    job = Job(StreamSource(num_tokens=64), RunSpec.parse("streaming+memory:memory_recall_blocks=2"))
    assert job.definition()["params"] == {"memory_recall_blocks": 2}


def _old_form(job: Job) -> tuple[str, dict]:
    """The key and definition an earlier version filed ``job`` under: every parameter, defaults included."""
    definition = {**job.definition(), "params": job.spec.config().to_dict()}
    return job_key(job.spec.policy, definition), definition


def test_records_of_the_old_key_form_are_refiled_not_rerun(tmp_path):
    job = Job(StreamSource(num_tokens=64), RunSpec.parse("streaming+memory:memory_recall_blocks=2"))
    old_key, old_definition = _old_form(job)
    assert old_key != job.key and compact_definition(old_definition) == job.definition()
    store = eval_store(tmp_path)
    store.save(old_key, {"policy": "streaming+memory", "params": {}, "tokens": 64, "ppl": 3.0, "cache_bytes_max": 1,
                         "job_key": old_key, "job": old_definition})
    other = Job(StreamSource(num_tokens=32), RunSpec.parse("streaming"))  # rerun under the new key since: a duplicate
    other_old_key, other_old_definition = _old_form(other)
    for key, ppl in ((other_old_key, 5.0), (other.key, 4.0)):
        store.save(key, {"policy": "streaming", "params": {}, "tokens": 32, "ppl": ppl, "cache_bytes_max": 1,
                         "job_key": key, "job": other_old_definition if key == other_old_key else other.definition()})

    record, ran = eval_store(tmp_path).get_or_run(job.key, lambda: pytest.fail("a re-filed record is not run again"))
    assert not ran and record["ppl"] == 3.0 and record["job_key"] == job.key and record["job"] == job.definition()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted([f"{job.key}.json", f"{other.key}.json"])
    assert json.loads((tmp_path / f"{other.key}.json").read_text())["ppl"] == 4.0  # the newer record stays
    # nothing is deleted: the old files are kept out of the reports' *.json
    assert sorted(p.name for p in (tmp_path / "superseded").iterdir()) == sorted([f"{old_key}.json",
                                                                                 f"{other_old_key}.json"])


def test_atomic_writes_use_unique_temporary_files_and_keep_the_old_content_on_error(tmp_path):
    target = tmp_path / "out" / "r.json"
    write_atomic(target, "old")
    with replacing(target) as first, replacing(target) as second:
        assert first != second and first.parent == second.parent == target.parent  # two writers never clash
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer block finished last
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "a" and sorted(p.name for p in target.parent.iterdir()) == ["r.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("content,message", [
    ('{"policy": "streaming", "ppl"', "unreadable"),
    ("[1, 2]", "not a JSON object"),
    ('{"policy": "streaming"}', "lacks ppl"),
])
def test_damaged_records_are_named_and_run_again(tmp_path, caplog, content, message):
    store = RunStore(tmp_path, ("policy", "ppl"))
    store.path("k").write_text(content)
    with pytest.raises(RecordError, match=f"record {store.path('k')} .*{message}"):
        read_record(store.path("k"), store.required)
    runs = []
    with caplog.at_level(logging.WARNING, logger="streaming_llm"):
        record, ran = store.get_or_run("k", lambda: runs.append(1) or {"policy": "streaming", "ppl": 1.0})
    assert ran and runs == [1] and str(store.path("k")) in caplog.text and "running it again" in caplog.text
    assert store.load("k") == record  # rewritten whole
    assert store.get_or_run("k", lambda: pytest.fail("reused records are not run"))[1] is False


def _eval(model_dir, out, *extra):
    return main(["eval", "--model", str(model_dir), "--num-tokens", "48", "--quiet", "--output-dir", str(out),
                 "--policy", "streaming:start_size=2,recent_size=10", *extra])


def test_eval_reruns_a_truncated_record_with_a_warning(tiny_model_dir, tmp_path, capsys, caplog, counted_runs):
    out = tmp_path / "eval"
    assert _eval(tiny_model_dir, out) == 0
    [path] = (out / "runs").glob("*.json")
    path.write_text(path.read_text()[:100])  # as a disk-full or a hand edit would leave it
    with caplog.at_level(logging.WARNING, logger="streaming_llm"):
        assert _eval(tiny_model_dir, out) == 0
    assert counted_runs.calls == 2 and str(path) in caplog.text and "Traceback" not in capsys.readouterr().err
    assert json.loads(path.read_text())["policy"] == "streaming"


TASKS_GRID = """
[profiles.equal]
equal_memory_to = "streaming"
policies = ["full", "streaming:start_size=4,recent_size=60", "sliding_window"]

[tasks]
tasks = ["passkey"]
lengths = [300]
depths = [0.5]
samples = 1
max_new_tokens = 4
chunk_size = 64
"""


def _tasks(model_dir, out, *extra):
    return main(["tasks", "--model", str(model_dir), "--output-dir", str(out), "--quiet", *extra])


def test_tasks_run_a_grid_with_set_at_equal_memory_and_resume(tiny_model_dir, tmp_path, caplog):
    grid = tmp_path / "g.toml"
    grid.write_text(TASKS_GRID)
    out = tmp_path / "tasks"
    assert _tasks(tiny_model_dir, out, "--grid", str(grid), "--set", "sliding_window.window_size=32") == 0
    records = {r["label"]: r for r in map(json.loads, map(lambda p: p.read_text(), (out / "records").glob("*.json")))}
    assert sorted(records) == ["full", "sliding_window:window_size=32", "streaming:start_size=4,recent_size=60"]
    assert all(r["length"] == 300 and r["depth"] == 0.5 and r["max_new_tokens"] == 4 for r in records.values())
    window = records["sliding_window:window_size=32"]
    assert window["params"]["window_size"] == 64  # sized to the bytes of streaming 4+60
    assert window["cache_bytes_target"] and records["full"]["cache_bytes_target"] is None
    assert "--grid" in (out / "results.md").read_text() and "--set sliding_window.window_size=32" in (out / "results.md").read_text()

    damaged = out / "records" / f"{window['job_key']}.json"
    damaged.write_text("{")
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json") if p != damaged}
    with caplog.at_level(logging.WARNING, logger="streaming_llm"):
        assert _tasks(tiny_model_dir, out, "--grid", str(grid), "--set", "sliding_window.window_size=32") == 0
    assert str(damaged) in caplog.text and json.loads(damaged.read_text())["label"] == window["label"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json") if p != damaged} == mtimes


@pytest.mark.parametrize("extra,message", [
    (["--set", "nope=1"], "no selected policy has parameter 'nope'"),
    (["--profiles", "p"], "--profiles needs --grid"),
])
def test_tasks_bad_set_and_profiles_fail_before_the_model_loads(tmp_path, capsys, extra, message):
    assert _tasks(tmp_path / "no-model", tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_grid_command_table_with_an_unknown_key_is_refused(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(TASKS_GRID + "lenghts = [1]\n")
    assert _tasks(tmp_path / "no-model", tmp_path / "out", "--grid", str(grid)) == 2
    assert "[tasks]: unknown key 'lenghts'; allowed:" in capsys.readouterr().err


def test_tasks_on_ray_give_the_local_records(tiny_model_dir, tmp_path):
    pytest.importorskip("ray")
    args = ["--policies", "streaming:start_size=4,recent_size=60", "--tasks", "passkey", "--lengths", "300",
            "--depths", "0", "1", "--samples", "1", "--chunk-size", "64", "--max-new-tokens", "4"]
    assert _tasks(tiny_model_dir, tmp_path / "local", *args) == 0
    assert _tasks(tiny_model_dir, tmp_path / "ray", *args, "--ray", "--ray-cpus", "2") == 0

    def read(folder):
        return {p.name: json.loads(p.read_text()) for p in (tmp_path / folder / "records").glob("*.json")}

    local, ray = read("local"), read("ray")
    assert local.keys() == ray.keys() and len(local) == 2
    for name, record in local.items():
        assert {k: ray[name][k] for k in ("prediction", "score", "params", "cache_tokens_max")} == \
            {k: record[k] for k in ("prediction", "score", "params", "cache_tokens_max")}
