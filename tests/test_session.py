"""The session: what a cache installs on its model, how the model call finds the cache, and the
end of every forward step (cross-layer work, high-water marks)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from transformers import DynamicCache

from conftest import tiny_model
from streaming_llm import BoundedCache, BoundedLayer, attention, make_cache
from streaming_llm.attention import ATTENTION_NAME
from streaming_llm.compat import cache_argument, cache_kwargs
from streaming_llm.policies.dynamickv import AdaptiveLayer, DynamicKVConfig
from streaming_llm.protocol import LayerPolicy

DYNAMICKV = dict(cache_size=16, window_size=4, reselect_interval=4, ratio_max=3.0)


def installed(model: torch.nn.Module) -> tuple:
    """Everything a session may change on ``model``."""
    routed = sum(module in attention._ROUTES for module in model.modules())
    return model.config._attn_implementation, len(model._forward_pre_hooks), len(model._forward_hooks), routed


def feed(model, bounded, ids, chunk=1, **call):
    """Logits ``(T, V)`` of ``ids`` fed ``chunk`` tokens per call, the cache passed as ``call`` says."""
    call = call or cache_kwargs(model, bounded)
    with torch.no_grad():
        return torch.cat([model(input_ids=ids[:, s : s + chunk], use_cache=True, **call).logits[0]
                          for s in range(0, ids.shape[1], chunk)])


@pytest.mark.parametrize("policy, params", [("streaming", dict(recent_size=8)), ("h2o", dict(heavy_size=4, recent_size=4))])
def test_closing_the_session_restores_the_model_exactly(token_stream, policy, params):
    model = tiny_model("llama")
    before = installed(model)
    assert before == ("sdpa", 0, 0, 0)  # importing the package installed nothing
    cache = make_cache(model, policy, **params)
    hooked = policy == "h2o"
    assert installed(model) == (ATTENTION_NAME if hooked else "sdpa", 1, 1, model.config.num_hidden_layers)
    feed(model, cache, token_stream[:, :20])
    cache.disable()
    assert installed(model) == before
    with make_cache(model, policy, **params) as cache:
        feed(model, cache, token_stream[:, :20])
    assert installed(model) == before


def test_a_discarded_cache_takes_its_hooks_with_it():
    model = tiny_model("llama")
    make_cache(model, "streaming", recent_size=8)  # never disabled, dropped at once
    assert installed(model)[1:] == (0, 0, 0)


@pytest.mark.skipif(cache_argument(tiny_model("llama")) != "cache",
                    reason="this transformers has no cache= argument (added in 5.24)")
@pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")  # the old name, on purpose
@pytest.mark.parametrize("policy, params", [("h2o", dict(heavy_size=4, recent_size=4)), ("dynamickv", DYNAMICKV)])
def test_both_argument_names_reach_the_cache(token_stream, policy, params):
    model, ids = tiny_model("llama"), token_stream[:, :60]
    with make_cache(model, policy, **params) as by_old_name:
        expected = feed(model, by_old_name, ids, past_key_values=by_old_name)
    with make_cache(model, policy, **params) as by_new_name:
        got = feed(model, by_new_name, ids, cache=by_new_name)
    assert torch.equal(got, expected)
    assert by_new_name.stats["tokens_seen"] == 60 and by_new_name.high_water == by_old_name.high_water


def test_a_hooked_model_called_without_our_cache_is_plain_causal_attention(token_stream):
    model, ids = tiny_model("llama"), token_stream[:, :40]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        expected_dynamic = feed(model, DynamicCache(config=model.config), ids, 8)
    with make_cache(model, "h2o", heavy_size=4, recent_size=4) as cache, torch.no_grad():
        assert model.config._attn_implementation == ATTENTION_NAME
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(feed(model, DynamicCache(config=model.config), ids, 8), expected_dynamic, atol=1e-5)
        assert cache.get_seq_length() == 0 and cache.high_water.slots == 0  # untouched


def test_two_caches_on_one_model_each_get_their_own_layers(token_stream):
    model, ids = tiny_model("llama"), token_stream[:, :50]
    params = dict(heavy_size=4, recent_size=4)
    with make_cache(model, "h2o", **params) as alone:
        expected = feed(model, alone, ids)
    with make_cache(model, "h2o", **params) as first, make_cache(model, "tova", cache_size=8) as second:
        got = []
        with torch.no_grad():
            for t in range(ids.shape[1]):  # interleaved calls, one token each
                got.append(model(input_ids=ids[:, t : t + 1], **cache_kwargs(model, first), use_cache=True).logits[0])
                model(input_ids=ids[:, t : t + 1], **cache_kwargs(model, second), use_cache=True)
    assert torch.equal(torch.cat(got), expected)
    assert first.get_seq_length() == second.get_seq_length() == 50


# --- DynamicKV: the budget reallocation is the end of the step ----------------------------------

class TrimInsideAttention(AdaptiveLayer):
    """DynamicKV as it was before the end-of-step pass: the last layer trims every layer from inside
    its own attention call."""

    def attach(self, layer) -> None:
        self.layer = layer

    def observe(self, probs, view):
        keep = super().observe(probs, view)
        if keep is None or self.layer_idx != self.allocator.num_layers - 1:
            return keep
        self.layer._keep(keep)
        for policy, budget in zip(self.allocator.policies, self.allocator.budgets):  # the old trim, verbatim
            scores, policy.scores = policy.scores, None
            if scores.shape[-1] > budget - policy.reselect_interval:
                policy.layer._keep(policy.select_top(scores, budget - policy.reselect_interval))
        return None

    def end_step(self):
        return None


@dataclass
class TrimInsideAttentionConfig(DynamicKVConfig):
    def build_layer_policies(self, num_layers):
        policies = super().build_layer_policies(num_layers)
        for policy in policies:
            policy.__class__ = TrimInsideAttention
        return policies


@pytest.mark.parametrize("chunk", [1, 7])
def test_dynamickv_end_of_step_equals_trimming_inside_attention(token_stream, chunk):
    model, ids = tiny_model("llama", num_hidden_layers=4), token_stream[:, :150]
    with BoundedCache.from_model(model, TrimInsideAttentionConfig(**DYNAMICKV)) as reference:
        expected = feed(model, reference, ids, chunk)
    with make_cache(model, "dynamickv", **DYNAMICKV) as cache:
        got = feed(model, cache, ids, chunk)
    assert cache.layers[0].policy.allocator.reallocations > 5
    assert torch.equal(got, expected)
    for ours, theirs in zip(cache.layers, reference.layers):
        assert torch.equal(ours.positions, theirs.positions)
    assert cache.layers[0].policy.allocator.budgets == reference.layers[0].policy.allocator.budgets


def test_dynamickv_generate_ends_every_step(token_stream):
    model, prompt = tiny_model("llama", num_hidden_layers=4), token_stream[:, :40]
    with make_cache(model, "dynamickv", **DYNAMICKV) as cache:
        out = model.generate(prompt, **cache_kwargs(model, cache), max_new_tokens=60, do_sample=False, pad_token_id=0)
    with make_cache(model, "dynamickv", **DYNAMICKV) as by_hand, torch.no_grad():
        logits = model(input_ids=prompt, **cache_kwargs(model, by_hand), use_cache=True).logits
        tokens = [logits[:, -1:].argmax(-1)]
        for _ in range(59):
            tokens.append(model(input_ids=tokens[-1], **cache_kwargs(model, by_hand), use_cache=True).logits.argmax(-1))
    assert torch.equal(out[:, 40:], torch.cat(tokens, dim=1))
    assert cache.high_water == by_hand.high_water
    assert sum(cache.cache_tokens()) <= 4 * DYNAMICKV["cache_size"]


# --- end of step without the session, high-water marks, stats ------------------------------------

class TrimAtEndOfStep(LayerPolicy):
    """Keeps everything during a step and the last ``size`` slots when it ends."""

    def __init__(self, size: int):
        self.size, self.slots = size, 0

    def max_slots(self):
        return self.size

    def select(self, view):
        self.slots = view.num_slots
        return None

    def end_step(self):
        return torch.arange(max(self.slots - self.size, 0), self.slots) if self.slots > self.size else None


def test_a_step_the_session_did_not_end_ends_at_the_next_update(token_stream):
    model = tiny_model("llama")
    cache = BoundedCache([BoundedLayer(TrimAtEndOfStep(5)) for _ in range(2)]).attach(model)
    with torch.no_grad():
        model(input_ids=token_stream[:, :9], **cache_kwargs(model, cache), use_cache=True)
        assert cache.cache_tokens() == [5, 5]  # the session ended the step
        model.model(input_ids=token_stream[:, 9:12], **cache_kwargs(model.model, cache), use_cache=True)  # not hooked
        assert cache.cache_tokens() == [8, 8]
        model.model(input_ids=token_stream[:, 12:13], **cache_kwargs(model.model, cache), use_cache=True)
        assert cache.cache_tokens() == [6, 6]  # 8 trimmed to 5 before the new token was stored
    cache.disable()


def test_high_water_marks_and_stats(token_stream):
    model, ids = tiny_model("llama"), token_stream[:, :40]
    with make_cache(model, "rocketkv", storage_size=16, topk=6, window_size=4, kernel_size=3, reselect_interval=4) as cache, torch.no_grad():
        marks = []
        for t in range(ids.shape[1]):
            model(input_ids=ids[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True)
            marks.append((max(cache.cache_tokens()), cache.cache_bytes()))
        stats = cache.stats
    assert cache.high_water.slots == max(m[0] for m in marks) == stats["slots_max"]
    assert cache.high_water.bytes == max(m[1] for m in marks) == stats["bytes_max"]
    assert stats["tokens_seen"] == 40 and stats["slots"] == marks[-1][0] and stats["bytes"] == marks[-1][1]
    assert {k: stats[k] for k in cache.policy_stats()} == cache.policy_stats() != {}
    cache.reset()
    assert cache.high_water.slots == cache.high_water.bytes == 0
