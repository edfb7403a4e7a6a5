"""Property-based fuzzing of every policy config (hypothesis).

For every registered policy, and for the memory tier wrapped around streaming:

- valid configs run within their budget: a table row (known valid) with some of its fields
  redrawn from small ranges either raises a ``ValueError`` naming one of the policy's parameters,
  or builds a cache that streams a short sequence through a tiny model and never holds more than
  its budget after a step (the largest layer's, which a reallocating policy may move between
  layers, and the fixed total over layers); ``compressor_type='custom'`` gets a user compressor
  that is told its capacity;
- invalid values raise a ``ValueError`` naming the parameter: one field set to a value of the
  wrong type, or an integer far below any allowed range.
"""

from __future__ import annotations

import types
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_table import POLICY_ROWS
from streaming_llm import cache_from_config, list_policies
from streaming_llm.compat import cache_kwargs
from streaming_llm.policies import get_policy_config_class

MEMORY = ("streaming+memory", dict(start_size=2, recent_size=8, memory_block_size=4, memory_recall_blocks=2))
FUZZED = [*POLICY_ROWS, MEMORY]
FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fields(policy: str) -> dict[str, typing.Any]:
    cls = get_policy_config_class(policy)
    return {name: annotation for name, annotation in typing.get_type_hints(cls).items()
            if name in cls.parameter_names()}


def _value_strategy(annotation) -> st.SearchStrategy:
    """Small values of a field's type: the sizes a tiny model can stream quickly."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return st.one_of(st.none(), _value_strategy(options[0]))
    if typing.get_origin(annotation) is typing.Literal:
        return st.sampled_from(typing.get_args(annotation))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-2, 24)
    if annotation is float:
        return st.floats(-0.5, 1.5, allow_nan=False)
    return st.nothing()


class ChunkMean:
    """A user compressor (``compressor_type='custom'``) that averages time-ordered chunks into
    the number of rows it is told it may return."""

    def compress(self, K, V, capacity):
        chunks = torch.arange(K.shape[0]) * capacity // K.shape[0]
        means = [(K[chunks == c].mean(0), V[chunks == c].mean(0)) for c in range(capacity)]
        return torch.stack([k for k, _ in means]), torch.stack([v for _, v in means])


def _named(error: ValueError, names) -> bool:
    return any(name in str(error) for name in names)


@pytest.mark.parametrize("policy,params", FUZZED, ids=[f"{p}-{i}" for i, (p, _) in enumerate(FUZZED)])
@FUZZ
@given(data=st.data())
def test_valid_configs_run_within_budget(tiny_llama, policy, params, data):
    fields = _fields(policy)
    redrawn = data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True), label="redrawn")
    drawn = {name: data.draw(_value_strategy(fields[name]), label=name) for name in redrawn}
    try:
        config = get_policy_config_class(policy).from_params({**params, **drawn})
    except ValueError as error:
        assert _named(error, fields), f"{error} names none of {sorted(fields)}"
        return
    tokens = torch.randint(0, tiny_llama.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    with cache_from_config(tiny_llama, config) as cache:
        if getattr(config, "compressor_type", None) == "custom":
            cache.compressors = {key: ChunkMean() for key in cache.compressors}
        budget = cache.max_slots()
        kwargs = cache_kwargs(tiny_llama, cache)
        with torch.no_grad():
            for begin in range(0, tokens.shape[1], 8):
                logits = tiny_llama(input_ids=tokens[:, begin:begin + 8], **kwargs, use_cache=True).logits
                assert torch.isfinite(logits).all()
                if budget is not None:
                    held = cache.cache_tokens()
                    assert max(held) <= cache.max_slots(), f"a layer holds {max(held)} > {cache.max_slots()}"
                    assert sum(held) <= budget * len(held), f"{sum(held)} slots > {budget} x {len(held)} layers"
        assert cache.get_seq_length() == tokens.shape[1]


def _invalid_strategy(annotation) -> st.SearchStrategy:
    """Values no field of this type accepts: the wrong type, or (ints) far below any minimum."""
    base = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = base[0]
    if typing.get_origin(kind) is typing.Literal:
        return st.sampled_from(["nope", "", 3])
    if kind is bool:
        return st.sampled_from(["maybe", 2, 0.5])
    if kind is int:
        return st.one_of(st.sampled_from(["many", 2.5, True]), st.integers(-10**6, -10**3))
    if kind is float:
        return st.sampled_from(["lots", True, [0.5]])
    return st.nothing()


@pytest.mark.parametrize("policy", [*list_policies(), "streaming+memory"])
@FUZZ
@given(data=st.data())
def test_invalid_values_raise_a_value_error_naming_the_parameter(policy, data):
    fields = _fields(policy)
    name = data.draw(st.sampled_from(sorted(fields)), label="field")
    value = data.draw(_invalid_strategy(fields[name]), label="value")
    with pytest.raises(ValueError) as raised:
        get_policy_config_class(policy).from_params({name: value})
    assert name in str(raised.value), f"{raised.value!r} does not name {name}"

