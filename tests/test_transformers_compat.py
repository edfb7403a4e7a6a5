"""Both spellings of the cache argument reach the cache, for every family and every policy.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (models and ``generate()``); the old name
warns until 5.40. Users may pass either for as long as the installed transformers accepts it; our own
calls use the installed spelling (see :mod:`streaming_llm.compat`), and pyproject.toml's
``filterwarnings`` turns a transformers deprecation reached through our code into a test failure.
"""

from __future__ import annotations

import contextlib
import inspect

import pytest
import torch

from conftest import tiny_model
from streaming_llm import list_policies, make_cache
from streaming_llm.compat import cache_argument, carries
from test_architectures import ARCHITECTURES, NAMES, build

#: policy -> small params; every registered policy must have a row (a new policy fails here until it has one).
POLICY_PARAMS = {
    "full": {},
    "sliding_window": {"window_size": 12},
    "streaming": {"start_size": 2, "recent_size": 10},
    "h2o": {"heavy_size": 6, "recent_size": 6},
    "tova": {"cache_size": 12},
    "snapkv": {"cache_size": 12, "window_size": 4, "reselect_interval": 4},
    "dynamickv": {"cache_size": 12, "window_size": 4, "reselect_interval": 4},
    "rocketkv": {"storage_size": 40, "topk": 8, "page_size": 2, "topr": 4, "window_size": 4, "kernel_size": 3},
    "adms": {"start_size": 2, "recent_size": 8, "compressed_budget": 4, "compression_interval": 4,
             "enable_dynamic_sink": False},
    "atskv": {"cache_size": 12, "start_size": 2, "recent_size": 4, "predictor": "prior"},
}


def spellings(model) -> list[str]:
    """The cache keywords the installed transformers accepts for ``model``."""
    return ["past_key_values", "cache"] if cache_argument(model) == "cache" else ["past_key_values"]


def deprecated(model, spelling: str):
    """Expect transformers' FutureWarning for the old name where it is deprecated, nothing otherwise."""
    if spelling != cache_argument(model):
        return pytest.warns(FutureWarning, match="past_key_values")
    return contextlib.nullcontext()


def chunked_logits(model, make, ids, spelling, chunk=7):
    with make() as cache, torch.no_grad():
        out = []
        for s in range(0, ids.shape[1], chunk):
            with deprecated(model, spelling):
                out.append(model(input_ids=ids[:, s : s + chunk], use_cache=True, **{spelling: cache}).logits[0])
        assert cache.get_seq_length() == ids.shape[1]  # the cache, not a fresh DynamicCache, saw the stream
        return torch.cat(out)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (1, 80), generator=torch.Generator().manual_seed(3))


def test_the_installed_spelling_is_the_models_own():
    model = tiny_model("llama")
    assert cache_argument(model) in inspect.signature(type(model).forward).parameters


def test_every_policy_has_a_row():
    assert sorted(POLICY_PARAMS) == list_policies()


@pytest.mark.parametrize("name", NAMES)
def test_both_spellings_give_the_same_logits_and_tokens_on_every_family(name, ids):
    model = build(name)
    make = lambda: make_cache(model, "streaming", start_size=2, recent_size=10)  # noqa: E731
    reference = chunked_logits(model, make, ids, cache_argument(model))
    prompt = ids[:, :12]
    tokens = {}
    for spelling in spellings(model):
        assert torch.equal(chunked_logits(model, make, ids, spelling), reference)
        with make() as cache, deprecated(model, spelling):
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30,
                                 min_new_tokens=30, do_sample=False, pad_token_id=0, **{spelling: cache})
            # generate() used our cache. (MPT's generate() feeds the whole sequence at every step, with
            # transformers' DynamicCache too, so its cache sees more tokens.)
            assert cache.get_seq_length() >= prompt.shape[1] + 29
        tokens[spelling] = out[0].tolist()
    assert len(set(map(tuple, tokens.values()))) == 1


@pytest.mark.parametrize("policy", sorted(POLICY_PARAMS))
def test_both_spellings_give_the_same_logits_for_every_policy(policy, ids):
    model = tiny_model("llama")
    make = lambda: make_cache(model, policy, **POLICY_PARAMS[policy])  # noqa: E731
    results = [chunked_logits(model, make, ids, spelling) for spelling in spellings(model)]
    assert all(torch.equal(r, results[0]) for r in results)


def test_a_call_carries_the_cache_under_any_name_or_position():
    cache = object()
    assert carries((), {"past_key_values": cache}, cache)
    assert carries((), {"cache": cache}, cache)
    assert carries((None, cache), {}, cache)
    assert not carries((), {"past_key_values": object()}, cache)
