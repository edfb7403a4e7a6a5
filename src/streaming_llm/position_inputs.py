"""In-cache input positions for models with learned absolute position embeddings (OPT, GPT-2).

Such a model adds ``embedding[position_ids]`` to each token's input, so a cached key carries the
position it was computed at, mixed into the hidden state where no cache can move it, and positions
past the trained table do not exist. What the cache can choose is the position of each *new*
token: its index inside the cache, ``m, m + 1, ...`` for a chunk arriving when ``m`` slots are
stored. That never exceeds the budget plus the chunk, and with an unbounded cache it is the
absolute position, so ``full`` is unchanged.

The model derives ``position_ids`` from ``get_seq_length()`` (tokens seen, which ``generate()``
and the masks rely on), and ``generate()`` passes absolute ``position_ids`` it increments itself,
so the one public place to choose them is the call: a forward pre-hook on the model
(``torch.nn.Module.register_forward_pre_hook``) sets ``position_ids`` when the call carries this
cache (as ``past_key_values=`` or, from transformers 5.24, ``cache=``) and leaves every other call
alone. It is removed by
``cache.disable()`` (or leaving ``with make_cache(...)``), or when the cache is garbage collected.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils.hooks import RemovableHandle

from .compat import carries


def _inputs(args: tuple, kwargs: dict) -> torch.Tensor:
    """The call's ``input_ids`` ``(B, q)`` or ``inputs_embeds`` ``(B, q, hidden)``."""
    if len(args) > 1:
        raise ValueError(
            "with a streaming_llm cache on a model with learned absolute positions, pass the inputs after "
            "input_ids as keyword arguments (the cache sets position_ids)"
        )
    tokens = args[0] if args else kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None:
        raise ValueError("expected input_ids or inputs_embeds")
    return tokens


def install(model: torch.nn.Module, cache) -> RemovableHandle:
    """Make every ``model(...)`` call that carries ``cache`` use ``cache.input_positions(q)``."""
    cache_ref = weakref.ref(cache)  # the hook must not keep a discarded cache alive

    def set_positions(module, args, kwargs):
        owner = cache_ref()
        if owner is None or not carries(args, kwargs, owner):
            return None
        inputs = _inputs(args, kwargs)
        positions = owner.input_positions(inputs.shape[1]).to(inputs.device)
        return args, {**kwargs, "position_ids": positions}

    handle = model.register_forward_pre_hook(set_positions, with_kwargs=True)
    weakref.finalize(cache, handle.remove)
    return handle
