"""The attention hook: plain path == the model's SDPA, scored path == eager attention, logit bias
== duplicated slots, and the scope of the hook on the model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from conftest import tiny_model
from streaming_llm import attention, make_cache
from streaming_llm.attention import ATTENTION_NAME, attention_hook, bounded_attention, grouped_scores, grouped_values
from streaming_llm.cache import BoundedCache, BoundedLayer
from streaming_llm.policies.base import LayerPolicy
from streaming_llm.compat import cache_kwargs

TOL = 1e-5


class KeepAllScored(LayerPolicy):
    """Asks for attention probabilities but keeps everything: exercises the scored path only."""

    needs_attention = True

    def __init__(self):
        self.seen_probs = []

    def max_slots(self):
        return None

    def observe(self, probs, view):
        assert probs.shape[-1] == view.num_slots
        self.seen_probs.append(probs)
        return None


def _logits(model, cache, ids, chunk):
    with torch.no_grad():
        return torch.cat([model(input_ids=ids[:, s : s + chunk], **cache_kwargs(model, cache), use_cache=True).logits[0]
                          for s in range(0, ids.shape[1], chunk)])


@pytest.mark.parametrize("chunk", [1, 7])
def test_plain_path_equals_the_models_own_sdpa(token_stream, chunk):
    model = tiny_model("llama")
    ids = token_stream[:, :90]
    expected = _logits(model, make_cache(model, "streaming", start_size=4, recent_size=20), ids, chunk)
    with attention_hook(model):
        assert model.config._attn_implementation == ATTENTION_NAME
        got = _logits(model, make_cache(model, "streaming", start_size=4, recent_size=20), ids, chunk)
    assert model.config._attn_implementation == "sdpa"
    assert (got - expected).abs().max().item() < TOL


@pytest.mark.parametrize("chunk", [1, 9])
def test_scored_path_equals_eager_attention(token_stream, chunk):
    eager = tiny_model("llama", attn_implementation="eager")
    ids = token_stream[:, :80]
    expected = _logits(eager, DynamicCache(config=eager.config), ids, chunk)
    model = tiny_model("llama")
    policies = [KeepAllScored() for _ in range(model.config.num_hidden_layers)]
    cache = BoundedCache([BoundedLayer(p) for p in policies]).attach(model)
    got = _logits(model, cache, ids, chunk)
    cache.disable()
    assert (got - expected).abs().max().item() < TOL
    probs = policies[0].seen_probs[-1]
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)  # rows are distributions


def test_hook_with_another_cache_falls_back_to_causal_attention(token_stream):
    model = tiny_model("llama")
    ids = token_stream[:, :40]
    expected = _logits(model, DynamicCache(config=model.config), ids, 8)
    with attention_hook(model):
        got = _logits(model, DynamicCache(config=model.config), ids, 8)
    assert (got - expected).abs().max().item() < TOL


def test_log_count_bias_equals_duplicated_slots():
    """A slot with bias log(c) attends exactly like c identical copies of it."""
    torch.manual_seed(0)
    query = torch.randn(1, 4, 3, 8)
    key, value = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    counts = torch.tensor([[3.0, 1, 1, 1, 1, 1], [1, 2, 1, 1, 1, 1]])  # per KV head

    module = torch.nn.Module()
    module.layer_idx = 0
    session = SimpleNamespace(carried=None)  # stands for the session of the cache the call carries
    routed = attention.route(module, session)

    def carry(bias):
        policy = SimpleNamespace(needs_attention=False)
        layer = SimpleNamespace(policy=policy, attention_bias=lambda: bias, recall=lambda query, active, current_keys: None)  # no memory tier
        session.carried = SimpleNamespace(layers=[layer])

    carry(counts.log())
    biased, _ = bounded_attention(module, query, key, value, None)
    # duplicate: head 0 gets 2 extra copies of slot 0, head 1 one extra copy of slot 1; pad the
    # other head with masked (-inf) slots so both heads have 8 slots.
    k2 = torch.cat([key[:, :, :1], key[:, :, :1], key[:, :, :2], key[:, :, 2:]], dim=2)
    v2 = torch.cat([value[:, :, :1], value[:, :, :1], value[:, :, :2], value[:, :, 2:]], dim=2)
    k2[:, 1, :4] = torch.stack([key[0, 1, 0], key[0, 1, 1], key[0, 1, 1], key[0, 1, 1]])[None]
    v2[:, 1, :4] = torch.stack([value[0, 1, 0], value[0, 1, 1], value[0, 1, 1], value[0, 1, 1]])[None]
    pad_bias = torch.zeros(2, 8)
    pad_bias[1, 2] = -math.inf  # head 1: slots 0, 1, 1, [1 masked] -> slot 1 counted twice
    carry(pad_bias)
    duplicated, _ = bounded_attention(module, query, k2, v2, None)
    attention.unroute(routed, session)
    assert torch.allclose(biased, duplicated, atol=1e-5)


def test_scored_policy_without_the_hook_is_refused(token_stream):
    model = tiny_model("llama")
    cache = make_cache(model, "h2o", heavy_size=4, recent_size=4)
    cache.disable()  # the user switched the hook off
    with torch.no_grad():
        model(input_ids=token_stream[:, :1], **cache_kwargs(model, cache), use_cache=True)
        with pytest.raises(RuntimeError, match="attention hook"):
            model(input_ids=token_stream[:, 1:2], **cache_kwargs(model, cache), use_cache=True)


def test_cache_context_manager_restores_the_model(token_stream):
    model = tiny_model("llama")
    with make_cache(model, "tova", cache_size=8) as cache:
        assert model.config._attn_implementation == ATTENTION_NAME
        with torch.no_grad():
            model(input_ids=token_stream[:, :20], **cache_kwargs(model, cache), use_cache=True)
    assert model.config._attn_implementation == "sdpa"


def test_a_stale_offer_does_not_leak_into_a_later_forward(token_stream):
    model = tiny_model("llama")
    ids = token_stream[:, :30]
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, make_cache(model, "streaming", recent_size=8)), use_cache=True)  # offers, unhooked
        expected = model(input_ids=ids).logits
        with attention_hook(model):
            got = model(input_ids=ids).logits
    assert (got - expected).abs().max().item() < TOL


@pytest.mark.parametrize("kv_heads, group, q, n", [(1, 1, 1, 5), (3, 3, 4, 9), (2, 4, 1, 1), (4, 2, 7, 3)])
def test_grouped_products_equal_the_repeated_kv_products(kv_heads, group, q, n):
    """Query head h reads KV head h // group, as transformers' repeat_kv lays them out."""
    torch.manual_seed(0)
    query = torch.randn(1, kv_heads * group, q, 8)
    key, value = torch.randn(1, kv_heads, n, 8), torch.randn(1, kv_heads, n, 8)
    expected_scores = query @ key.repeat_interleave(group, dim=1).transpose(-1, -2)
    torch.testing.assert_close(grouped_scores(query, key), expected_scores)
    probs = torch.softmax(expected_scores, dim=-1)
    torch.testing.assert_close(grouped_values(probs, value), probs @ value.repeat_interleave(group, dim=1))


def test_dropout_may_come_by_position_as_wrappers_pass_it():
    """kvpress wraps every registered attention function and passes ``dropout`` as the sixth
    positional argument (``sdpa_attention_forward``'s order); ``scaling`` must still be honoured."""
    query, key, value = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    module = torch.nn.Module()
    module.layer_idx = 0
    session = SimpleNamespace(carried=None)
    routed = attention.route(module, session)
    layer = SimpleNamespace(policy=SimpleNamespace(needs_attention=False), attention_bias=lambda: None,
                            recall=lambda query, active, current_keys: None)
    session.carried = SimpleNamespace(layers=[layer])
    by_name, _ = bounded_attention(module, query, key, value, None, dropout=0.0, scaling=0.25)
    by_position, _ = bounded_attention(module, query, key, value, None, 0.0, scaling=0.25)
    default_scale, _ = bounded_attention(module, query, key, value, None, 0.0)
    attention.unroute(routed, session)
    assert torch.equal(by_name, by_position) and not torch.allclose(by_name, default_scale)
