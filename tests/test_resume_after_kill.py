"""Every resumable command (eval, sweep, tasks, benchmark) killed while it writes a record resumes:
no finished record is lost or rewritten, no half-written file is left, and only the missing
units run again.

The kill is injected into the run store: after ``FINISHED`` records are stored, the next save
writes half of its record into the atomic writer's temporary file and then raises ``Killed``, a
``BaseException`` like the ``KeyboardInterrupt`` of a SIGINT (so no executor swallows it, as they
do an ``Exception`` of one unit), as a process killed mid-write would stop. ``test_sweep.py`` also kills a real sweep process
with SIGKILL.
"""

from __future__ import annotations

import json

import pytest

from streaming_llm.cli import main
from streaming_llm.data import load_text
from streaming_llm.runs import RunStore, replacing

FINISHED = 1
SAVE = RunStore.save  # the real one, whatever a test has patched in since


class Killed(BaseException):
    """The process died here."""


class Killer:
    """Counts the records the commands store; the save after ``after`` of them dies mid-write."""

    def __init__(self, after: int | None):
        self.after, self.saved = after, []

    def install(self, monkeypatch) -> "Killer":
        def save(store, key, record):
            if self.after is not None and len(self.saved) == self.after:
                with replacing(store.path(key)) as tmp:
                    tmp.write_text(json.dumps(record)[: len(json.dumps(record)) // 2])
                    raise Killed("killed while writing a record")
            SAVE(store, key, record)
            self.saved.append(key)

        monkeypatch.setattr(RunStore, "save", save)
        return self


def _eval(model_dir, out):
    return ["eval", "--model", str(model_dir), "--num-tokens", "40", "--chunk-size", "8", "--quiet",
            "--output-dir", str(out), "--policy", "full", "streaming:start_size=2,recent_size=10",
            "sliding_window:window_size=12"]


def _sweep(model_dir, out):
    from test_sweep import write_grid

    grid = write_grid(out.parent / "grid.toml", model_dir, tokens=40, chunk=8)
    return ["sweep", str(grid), "--output-root", str(out), "--profiles", "balanced", "--quiet"]


def _tasks(model_dir, out):
    return ["tasks", "--model", str(model_dir), "--output-dir", str(out), "--quiet", "--tasks", "passkey",
            "--lengths", "300", "--depths", "0.5", "--samples", "2", "--max-new-tokens", "2", "--chunk-size", "64",
            "--policies", "full", "streaming:start_size=4,recent_size=60"]


def _benchmark(model_dir, out):
    source = out.parent / "longbench"
    source.mkdir(parents=True, exist_ok=True)
    book = load_text("builtin:pioneer-days")
    (source / "hotpotqa.jsonl").write_text("".join(json.dumps(
        {"input": f"Who met Bob on day {i}?", "context": book[i * 3000: i * 3000 + 2000] + " Alice met Bob.",
         "answers": ["Alice"], "all_classes": None, "_id": f"lb{i}", "length": 400}) + "\n" for i in range(2)))
    return ["benchmark", "--model", str(model_dir), "--benchmark", "longbench", "--tasks", "hotpotqa",
            "--source", str(source), "--samples", "2", "--max-length", "200", "--max-new-tokens", "2",
            "--chunk-size", "64", "--output-dir", str(out), "--quiet",
            "--policies", "full", "streaming:start_size=4,recent_size=60"]


def _records(out):
    """Every record file (by path) and its content; each must be whole JSON."""
    return {path: json.loads(path.read_text()) for path in out.rglob("*.json")
            if path.parent.name in ("runs", "records")}


@pytest.mark.parametrize("command,total", [(_eval, 3), (_sweep, 6), (_tasks, 4), (_benchmark, 4)],
                         ids=["eval", "sweep", "tasks", "benchmark"])
def test_a_command_killed_mid_write_resumes_without_loss(tiny_model_dir, tmp_path, monkeypatch, command, total):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = command(tiny_model_dir, out)
    killer = Killer(after=FINISHED).install(monkeypatch)
    with pytest.raises(Killed):
        main(argv)
    finished = _records(out)  # json.loads fails on any half-written record
    assert len(finished) == FINISHED == len(killer.saved)
    assert not list(out.rglob("*.tmp")), "the atomic writer left its temporary file"
    stamps = {path: path.stat().st_mtime_ns for path in finished}

    resumed = Killer(after=None).install(monkeypatch)
    assert main(argv) == 0
    assert len(resumed.saved) == total - FINISHED  # only the missing units ran
    after = _records(out)
    assert len(after) == total
    assert all(after[path] == record and path.stat().st_mtime_ns == stamps[path] for path, record in finished.items())
