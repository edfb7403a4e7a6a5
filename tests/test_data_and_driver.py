"""Shipped corpora, stream assembly, the streaming driver and atomic writes."""

from __future__ import annotations

import math

import pytest
import torch

from streaming_llm import make_cache
from streaming_llm.compat import cache_kwargs
from streaming_llm.data import BUILTIN_CORPORA, accumulate_until, list_builtin_texts, load_text, tokenize_stream
from streaming_llm.evaluation.driver import stream
from streaming_llm.report import write_atomic


def test_builtin_books_ship_with_the_package():
    assert set(list_builtin_texts()) == {f"builtin:{n}" for n in BUILTIN_CORPORA}
    book = load_text("builtin:pioneer-days")
    assert "REMINISCENCES OF PIONEER DAYS IN ST. PAUL" in book[:500]
    assert "\r" not in book and len(book) > 240_000
    assert len(load_text("builtin:pg19")) > 850_000


def test_text_file_and_bad_source(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"line one\r\nline two\r\n")
    assert load_text(str(path)) == "line one\nline two\n"
    with pytest.raises(ValueError, match="builtin:pioneer-days"):
        load_text("builtin:nope")
    with pytest.raises(ValueError, match="no such file"):
        load_text(str(tmp_path / "missing.txt"))


def test_concat_stream_accumulates_samples_until_the_target():
    samples = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert accumulate_until(iter(samples), 6) == [1, 2, 3, 4, 5, 6]
    assert accumulate_until(iter(samples), 6, separator=[0]) == [1, 2, 3, 0, 4, 5]
    assert accumulate_until(iter(samples), 100) == list(range(1, 11))  # fewer tokens than asked: all of them


def test_tokenize_stream_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        tokenize_stream(None, num_tokens=10)


def test_driver_matches_a_direct_forward(tiny_llama, token_stream):
    """Token-by-token NLLs with the full cache equal the NLLs of one plain forward."""
    ids = token_stream[0, :120]
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids[None]).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    for chunk in (1, 8):
        result = stream(tiny_llama, make_cache(tiny_llama, "full"), ids.tolist(), chunk_size=chunk, progress=False)
        assert result.tokens == 119
        assert torch.allclose(torch.tensor(result.nll), expected, atol=1e-4)
        assert math.isclose(result.ppl(), math.exp(expected.mean().item()), rel_tol=1e-4)
    assert result.cache_tokens[-1] == 119 and result.tok_per_s > 0 and result.peak_rss_bytes > 0


def test_driver_records_a_bounded_cache(tiny_llama, token_stream):
    cache = make_cache(tiny_llama, "streaming", start_size=4, recent_size=20)
    result = stream(tiny_llama, cache, token_stream[0, :100].tolist(), progress=False)
    assert max(result.cache_tokens) == 24
    # bytes per step, read by hand: constant once full, and the most of them is the cache's mark
    step_bytes, ids = [], token_stream[:, :99]
    with make_cache(tiny_llama, "streaming", start_size=4, recent_size=20) as again, torch.no_grad():
        for t in range(ids.shape[1]):
            tiny_llama(input_ids=ids[:, t : t + 1], **cache_kwargs(tiny_llama, again), use_cache=True)
            step_bytes.append(again.cache_bytes())
    assert len(set(step_bytes[30:])) == 1  # constant once full
    assert result.cache_bytes_max == max(step_bytes) == cache.high_water.bytes == cache.cache_bytes()
    assert result.cache_bytes_max_by_layer_type == {"full_attention": max(step_bytes)}


def test_driver_rejects_bad_arguments(tiny_llama):
    with pytest.raises(ValueError, match="chunk_size"):
        stream(tiny_llama, make_cache(tiny_llama, "full"), [1, 2, 3], chunk_size=0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        stream(tiny_llama, make_cache(tiny_llama, "full"), [1])


def test_write_atomic_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out" / "r.json"
    write_atomic(target, "old")

    with pytest.raises(TypeError):
        write_atomic(target, 123)  # not text: fails while writing the temporary file
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temporary file left
