"""In-cache input positions for models with learned absolute position embeddings (OPT, GPT-2).

Such a model adds ``embedding[position_ids]`` to each token's input, so a cached key carries the
position it was computed at, mixed into the hidden state where no cache can move it, and positions
past the trained table do not exist. What the cache can choose is the position of each *new*
token: its index inside the cache, ``m, m + 1, ...`` for a chunk arriving when ``m`` slots are
stored. That never exceeds the budget plus the chunk, and with an unbounded cache it is the
absolute position, so ``full`` is unchanged.

The model derives ``position_ids`` from ``get_seq_length()`` (tokens seen, which ``generate()``
and the masks rely on), and ``generate()`` passes absolute ``position_ids`` it increments itself,
so the one public place to choose them is the call: the session's forward pre-hook on the model
(:mod:`streaming_llm.session`) sets ``position_ids`` with :func:`with_positions` when the call
carries the cache and leaves every other call alone.
"""

from __future__ import annotations

import torch


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


def with_positions(cache, args: tuple, kwargs: dict) -> dict:
    """``kwargs`` of a model call carrying ``cache``, with ``position_ids`` set to ``cache.input_positions(q)``."""
    inputs = _inputs(args, kwargs)
    return {**kwargs, "position_ids": cache.input_positions(inputs.shape[1]).to(inputs.device)}
