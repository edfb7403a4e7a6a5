"""Logit-level equivalences on tiny random models: full == DynamicCache, streaming == StreamingLLM."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import FAMILIES, NaiveStreamingReference, tiny_model
from policy_table import rows
from streaming_llm import enable_streaming_llm, make_cache
from streaming_llm.compat import cache_kwargs

TOL = 1e-4


def _chunked_logits(model, cache, ids, chunk):
    with torch.no_grad():
        return torch.cat(
            [model(input_ids=ids[:, s : s + chunk], **cache_kwargs(model, cache), use_cache=True).logits[0]
             for s in range(0, ids.shape[1], chunk)]
        )


@pytest.mark.parametrize("chunk", [1, 16, 37])
def test_full_reproduces_dynamic_cache(tiny_llama, token_stream, chunk):
    ids = token_stream[:, :300]
    expected = _chunked_logits(tiny_llama, DynamicCache(config=tiny_llama.config), ids, chunk)
    got = _chunked_logits(tiny_llama, make_cache(tiny_llama, "full"), ids, chunk)
    assert (got - expected).abs().max().item() < TOL


def _kept(t: int, sink: int, recent: int) -> list[int]:
    """Tokens StreamingLLM holds when token ``t`` arrives (token by token)."""
    return list(range(min(sink, t))) + list(range(max(sink, t - recent), t))


def test_streaming_one_layer_equals_fresh_forward_over_kept_tokens(token_stream):
    # With one layer a token's K/V depend on the token alone, so StreamingLLM is literally a fresh
    # forward over [sinks + window + current] at contiguous positions. (With more layers the
    # cached deeper K/V remember evicted context: that is the cached method, not recomputation.)
    model = tiny_model("llama", num_hidden_layers=1)
    sink, recent = 4, 16
    cache = enable_streaming_llm(model, start_size=sink, recent_size=recent)
    ids = token_stream[:, :150]
    worst = 0.0
    with torch.no_grad():
        for t in range(ids.shape[1]):
            got = model(input_ids=ids[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True).logits[0, -1]
            fresh = model(input_ids=ids[:, _kept(t, sink, recent) + [t]]).logits[0, -1]
            worst = max(worst, (got - fresh).abs().max().item())
    assert worst < TOL


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk", [1, 5])
def test_streaming_matches_naive_in_cache_positions(token_stream, family, chunk):
    model = tiny_model(family)
    sink, recent = 4, 16
    ours = make_cache(model, "streaming", start_size=sink, recent_size=recent)
    naive = NaiveStreamingReference(model, sink, recent)
    ids = token_stream[:, :200]
    worst = 0.0
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            chunk_ids = ids[:, s : s + chunk]
            got = model(input_ids=chunk_ids, **cache_kwargs(model, ours), use_cache=True).logits[0]
            worst = max(worst, (got - naive.step(model, chunk_ids)).abs().max().item())
    assert worst < TOL


def test_position_shift_matters(tiny_llama, token_stream):
    """Without the shift the sinks keep their absolute positions: logits must differ once tokens are evicted."""
    sink, recent = 4, 16
    shifted = make_cache(tiny_llama, "streaming", start_size=sink, recent_size=recent)
    absolute = make_cache(tiny_llama, "streaming", start_size=sink, recent_size=recent, enable_pos_shift=False)
    ids = token_stream[:, :80]
    a = _chunked_logits(tiny_llama, shifted, ids, 1)
    b = _chunked_logits(tiny_llama, absolute, ids, 1)
    assert (a[: sink + recent] - b[: sink + recent]).abs().max().item() < TOL  # nothing evicted yet
    assert (a[-10:] - b[-10:]).abs().max().item() > 1e-3


def _generate(model, cache, prompt, new_tokens):
    return model.generate(
        prompt, attention_mask=torch.ones_like(prompt), **cache_kwargs(model, cache), max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
    )


@pytest.mark.parametrize("policy,params", rows())
def test_generate_matches_a_manual_loop(tiny_llama, token_stream, policy, params):
    """generate() far past the window gives the greedy tokens of a manual token loop: it slices its
    inputs with ``get_seq_length()`` and builds masks from ``get_mask_sizes()``, which a cache that
    miscounts (the old SinkCache bugs) breaks, and the budget holds all along."""
    prompt = token_stream[:, :40]  # longer than the window: the prefill itself evicts
    new_tokens = 80  # 5x the window
    with make_cache(tiny_llama, policy, **params) as cache:
        out = _generate(tiny_llama, cache, prompt, new_tokens)
        assert max(cache.cache_tokens()) <= (cache.max_slots() or 10**9)
    generated = out.sequences[0, prompt.shape[1]:]

    manual, step_input = [], prompt
    with make_cache(tiny_llama, policy, **params) as cache, torch.no_grad():
        for _ in range(new_tokens):
            logits = tiny_llama(input_ids=step_input, **cache_kwargs(tiny_llama, cache), use_cache=True).logits[0, -1]
            step_input = logits.argmax().view(1, 1)
            manual.append(step_input.item())
    assert generated.tolist() == manual


#: Policies whose kept tokens are the same in every head and layer, so the naive in-cache-position
#: reference of conftest can hold exactly them: (policy, params, its sink and window).
POSITIONAL = [
    ("streaming", dict(start_size=4, recent_size=12), 4, 12),
    ("sliding_window", dict(window_size=16), 0, 16),
    ("full", {}, 0, 10**9),
]


@pytest.mark.parametrize("policy,params,sink,window", POSITIONAL, ids=[p for p, *_ in POSITIONAL])
def test_generate_logits_match_the_naive_reference(tiny_llama, token_stream, policy, params, sink, window):
    """Every step's logits of generate() equal those of the independent naive reference, which
    re-rotates what it keeps to in-cache positions with transformers' own RoPE."""
    prompt = token_stream[:, :40]
    with make_cache(tiny_llama, policy, **params) as cache:
        out = _generate(tiny_llama, cache, prompt, 80)
    generated = out.sequences[0, prompt.shape[1]:]
    reference = NaiveStreamingReference(tiny_llama, sink, window)
    inputs = [prompt] + [t.view(1, 1) for t in generated[:-1]]
    worst = max(
        (gen_logits[0] - reference.step(tiny_llama, ids)[-1]).abs().max().item()
        for gen_logits, ids in zip(out.logits, inputs)
    )
    assert worst < TOL


@pytest.mark.parametrize("policy,params", rows(lambda policy: policy not in {p for p, *_ in POSITIONAL}))
def test_scored_policies_with_room_for_everything_equal_dynamic_cache(tiny_llama, token_stream, policy, params):
    """The scored and compressing policies choose per head, so no naive forward can hold what they
    keep once they evict (their selections are checked against literal references in
    test_scored_policies.py and test_adms.py). What an independent reference can check is the path
    they run on, the attention hook with its masks and biases: given room for the whole stream
    they must give DynamicCache's logits."""
    ids = token_stream[:, :48]
    roomy = {**params, **{k: 64 for k in ("cache_size", "storage_size", "heavy_size", "recent_size", "topk")
                          if k in params}}
    expected = _chunked_logits(tiny_llama, DynamicCache(config=tiny_llama.config), ids, 5)
    with make_cache(tiny_llama, policy, **roomy) as cache:
        got = _chunked_logits(tiny_llama, cache, ids, 5)
        assert cache.max_slots() >= ids.shape[1]
    assert (got - expected).abs().max().item() < TOL
