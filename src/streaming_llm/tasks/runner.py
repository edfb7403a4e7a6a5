"""Greedy answers with a policy's cache: chunked prefill, then one token at a time.

Prefill feeds the prompt in chunks of ``chunk_size`` tokens, so a bounded cache evicts after
every chunk and never holds more than its budget plus one chunk (see
:mod:`streaming_llm.evaluation.driver` on what a chunk sees). Decoding is plain greedy
(argmax) from the cache the policy kept, stopping at an end-of-turn token. ``answer_prompt``
does all of it with a fresh cache for one policy and scores the answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import cache_from_config
from ..cache import BoundedCache
from ..checks import check_int
from ..compat import cache_kwargs
from ..evaluation.memory import peak_rss_bytes
from ..policies import PolicyConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeConfig:
    """``chunk_size``: prompt tokens per prefill forward (>= 1).
    ``max_new_tokens``: the most answer tokens generated (>= 1)."""

    chunk_size: int = 256
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        for name in ("chunk_size", "max_new_tokens"):
            check_int(name, getattr(self, name), 1)


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    cache_tokens_max: int = 0  # most slots any layer held after an update
    cache_bytes_max: int = 0


def stop_token_ids(tokenizer) -> set[int]:
    """End-of-sequence ids, plus the end-of-turn token of chat templates that have one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    cache: BoundedCache,
    prompt_ids: Sequence[int],
    config: DecodeConfig = DecodeConfig(),
    stop_ids: Iterable[int] = (),
) -> Generation:
    """Greedy continuation of ``prompt_ids`` (without the prompt), at most ``max_new_tokens``."""
    if len(prompt_ids) < 1:
        raise ValueError("prompt_ids must hold at least one token")
    device = next(model.parameters()).device
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device).reshape(1, -1)
    stop = set(stop_ids)
    result = Generation()
    cache_arg = cache_kwargs(model, cache)
    _synchronize(device)
    start = time.perf_counter()
    for begin in range(0, ids.shape[1], config.chunk_size):
        # logits_to_keep=1: only the last position's logits are ever used.
        logits = model(input_ids=ids[:, begin : begin + config.chunk_size], **cache_arg,
                       use_cache=True, logits_to_keep=1).logits
    _synchronize(device)
    result.prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(config.max_new_tokens):
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        result.tokens.append(token)
        if step + 1 == config.max_new_tokens:
            break
        logits = model(input_ids=torch.tensor([[token]], device=device), **cache_arg,
                       use_cache=True, logits_to_keep=1).logits
    _synchronize(device)
    result.decode_seconds = time.perf_counter() - start
    # the session notes the largest cache after every forward; read it once, outside the timed loops
    result.cache_tokens_max, result.cache_bytes_max = cache.high_water.slots, cache.high_water.bytes
    return result


def answer_prompt(model: torch.nn.Module, tokenizer, config: PolicyConfig, prompt_ids: Sequence[int],
                  decode: DecodeConfig, stop_ids: Iterable[int], score: Callable[[str], float]) -> dict[str, Any]:
    """Greedy answer to ``prompt_ids`` with a fresh cache following ``config``, its ``score`` and
    what a result record keeps of the run (sizes, timings)."""
    with cache_from_config(model, config) as cache:  # gives the model its attention back afterwards
        generation = greedy_generate(model, cache, prompt_ids, decode, stop_ids)
        budget = cache.max_slots()
        stats, passive = cache.policy_stats(), cache.passive_bytes()
    prediction = tokenizer.decode(generation.tokens, skip_special_tokens=True)
    return {
        "prediction": prediction,
        "score": score(prediction),
        "prompt_tokens": len(prompt_ids),
        "generated_tokens": len(generation.tokens),
        "prefill_seconds": generation.prefill_seconds,
        "decode_seconds": generation.decode_seconds,
        "cache_tokens_max": generation.cache_tokens_max,
        "cache_bytes_max": generation.cache_bytes_max,
        "cache_budget_tokens": budget,
        "policy_stats": stats,  # with memory: recall counts, LRU hits, bytes moved
        "passive_bytes": passive,
        "peak_rss_bytes": peak_rss_bytes(),  # the process's high-water mark so far (passive store included)
    }


def warn_beyond_positions(model: torch.nn.Module, prompt_tokens: int, new_tokens: int) -> None:
    """Log a warning when prompts and answers may run past the model's trained positions."""
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and prompt_tokens + new_tokens > max_positions:
        log.warning("prompts up to %d tokens + %d new tokens exceed the model's %d positions",
                    prompt_tokens, new_tokens, max_positions)
