"""The two sides of the peer benchmark, on the same token ids: kvpress presses and our policies.

Both answer two kinds of cell:

- ``answer``: greedy answer to a prompt whose question comes after a long context
  (``context_ids`` then ``question_ids``), at most ``max_new_tokens`` tokens, stopping at an
  end-of-turn token (the same stop set on both sides);
- ``continuation``: the NLL of ``continuation_ids`` (teacher-forced) after ``context_ids``.

kvpress follows its own pipeline (``kvpress/pipeline.py``, 0.5.5): the whole context goes through
``model.model`` in ONE forward inside the press's context manager (the press's forward hooks
compress each layer's K/V after that layer has attended to all of it); the question then runs at
positions after the context (after the *kept* length for ``KeyRerotationPress``), and greedy
decoding follows, inside the press's context only for ``DecodingPress``. Ours streams the same
ids through a bounded cache in chunks of ``chunk_size`` tokens: the cache never holds more than its
budget plus one chunk, during prefill too.

Each cell reports ``prefill_seconds`` (everything before the first answer token: context and
question; for a continuation, the context) and ``decode_seconds`` (the answer tokens; for a
continuation, its teacher-forced forward), cache bytes, and the process's peak RSS above what it held when the cell began.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from streaming_llm.evaluation.memory import current_rss_bytes, peak_rss_bytes, reset_peak_memory

#: kvpress methods of this benchmark: name -> how to build the press for a compression ratio
#: (kvpress's ``compression_ratio`` is the fraction of the context REMOVED) and its kept tokens.
KVPRESS_METHODS = ("kvpress-streaming", "kvpress-snapkv", "kvpress-tova", "kvpress-knorm",
                   "kvpress-expected-attention", "kvpress-decoding-knorm")

#: Our policies of this benchmark, as ``streaming-llm`` policy specs (sized to kvpress's kept bytes).
#: ATSKV (issue 17) with its shipped SmolLM2 predictor; it is sized like the others. It landed after
#: the committed table (docs/results/peers/peers.md) was measured, so that table has no atskv row.
#: ADMS: a fixed sink (its dynamic sink is sized for 32k-token streams: 327 sinks) and a mid budget
#: that still fits the smallest kept size (2k x 0.1); the memory tier: 16-token blocks, so its 4
#: recalled blocks (64 slots, counted in the active bytes) fit the same smallest size.
OUR_POLICIES = ("streaming", "h2o", "snapkv", "adms:enable_dynamic_sink=false,compressed_budget=64",
                "streaming+memory:memory_block_size=16,memory_recall_blocks=4", "atskv")


@dataclass(frozen=True)
class Cell:
    """One prompt for one method: what to feed and what to ask of it."""

    kind: str  # "answer" | "continuation"
    context_ids: tuple[int, ...]
    question_ids: tuple[int, ...] = ()
    continuation_ids: tuple[int, ...] = ()
    max_new_tokens: int = 16


def kept_tokens(context_length: int, ratio: float) -> int:
    """Tokens a kvpress ScorerPress keeps of ``context_length`` at ``compression_ratio=ratio``
    (``scorer_press.py``: ``n_kept = int(k_len * (1 - compression_ratio))``)."""
    return int(context_length * (1 - ratio))


def make_press(method: str, ratio: float, kept: int):
    import kvpress

    if method == "full":  # no press: the pipeline's plain DynamicCache
        return None
    if method == "kvpress-streaming":  # its maintainers: the paper's StreamingLLM needs the rerotation wrapper
        return kvpress.KeyRerotationPress(press=kvpress.StreamingLLMPress(compression_ratio=ratio))
    if method == "kvpress-snapkv":
        return kvpress.SnapKVPress(compression_ratio=ratio)
    if method == "kvpress-tova":
        return kvpress.TOVAPress(compression_ratio=ratio)
    if method == "kvpress-knorm":
        return kvpress.KnormPress(compression_ratio=ratio)
    if method == "kvpress-expected-attention":
        return kvpress.ExpectedAttentionPress(compression_ratio=ratio)
    if method == "kvpress-decoding-knorm":
        # Compression during generation only: the context is prefilled whole, then every decode
        # step (interval 1) cuts the cache back to the same kept tokens as the prefill presses.
        return kvpress.DecodingPress(base_press=kvpress.KnormPress(), compression_interval=1, target_size=kept,
                                     hidden_states_buffer_size=0)
    raise ValueError(f"method must be one of {', '.join(KVPRESS_METHODS)}; got {method!r}")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _continuation_nll(logits: torch.Tensor, continuation: torch.Tensor) -> list[float]:
    """NLL of continuation[1:] from the logits at continuation[:-1] (the first token is never
    scored: kvpress's prefill runs ``model.model`` without the LM head, as its pipeline does)."""
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), continuation[0, 1:], reduction="none").tolist()


def _greedy(step, first_logits: torch.Tensor, max_new_tokens: int, stop: set[int]) -> list[int]:
    """Greedy tokens from ``first_logits``; ``step(token, i)`` runs one decode forward."""
    tokens, logits = [], first_logits
    for i in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        tokens.append(token)
        if i + 1 < max_new_tokens:
            logits = step(token, i)
    return tokens


@torch.no_grad()
def run_kvpress(model, method: str, ratio: float, cell: Cell, stop: Iterable[int]) -> dict[str, Any]:
    from kvpress import DecodingPress, KeyRerotationPress
    from transformers import DynamicCache

    context = torch.tensor([cell.context_ids])
    kept = kept_tokens(context.shape[1], ratio)
    press = make_press(method, ratio, kept)
    decoding = isinstance(press, DecodingPress)
    cache = DynamicCache()
    with press(model) if press is not None and not decoding else contextlib.nullcontext():
        _, prefill_seconds = _timed(lambda: model.model(input_ids=context, past_key_values=cache))
    # positions continue after the context, or after what was kept where keys were re-rotated
    start = cache.get_seq_length() if isinstance(press, KeyRerotationPress) else context.shape[1]
    result: dict[str, Any] = {}
    with press(model) if decoding else contextlib.nullcontext():
        t0 = time.perf_counter()
        if cell.kind == "answer":
            question = torch.tensor([cell.question_ids])
            positions = torch.arange(start, start + question.shape[1])[None]
            logits = model(input_ids=question, past_key_values=cache, position_ids=positions, logits_to_keep=1).logits
            # the question forward counts as prefill, as on our side, where it streams with the context
            prefill_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            after = start + question.shape[1]
            step = lambda token, i: model(input_ids=torch.tensor([[token]]), past_key_values=cache,  # noqa: E731
                                          position_ids=torch.tensor([[after + i]])).logits
            result["tokens"] = _greedy(step, logits, cell.max_new_tokens, set(stop))
        else:
            continuation = torch.tensor([cell.continuation_ids])
            if decoding:  # a decoding press acts per decode step: feed the continuation one token at a time
                logits = torch.cat([model(input_ids=continuation[:, i:i + 1], past_key_values=cache,
                                          position_ids=torch.tensor([[start + i]])).logits
                                    for i in range(continuation.shape[1])], dim=1)
            else:
                positions = torch.arange(start, start + continuation.shape[1])[None]
                logits = model(input_ids=continuation, past_key_values=cache, position_ids=positions).logits
            result["nll"] = _continuation_nll(logits, continuation)
        result["decode_seconds"] = time.perf_counter() - t0
    result["prefill_seconds"] = prefill_seconds
    result["kept_tokens"] = kept
    result["cache_bytes_end"] = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    return result


def our_config(model, policy: str, layer_bytes: int):
    """Our ``policy`` (a spec ``NAME[:K=V,...]``) sized to ``layer_bytes`` resident bytes per layer."""
    from streaming_llm.evaluation.runs import RunSpec
    from streaming_llm.sizing import KVGeometry

    return RunSpec.parse(policy).config().sized_to_bytes(KVGeometry.of(model), layer_bytes)


@torch.no_grad()
def run_ours(model, policy: str, ratio: float, cell: Cell, stop: Iterable[int], chunk_size: int) -> dict[str, Any]:
    from streaming_llm import cache_from_config
    from streaming_llm.compat import cache_kwargs
    from streaming_llm.sizing import KVGeometry
    from streaming_llm.tasks.runner import DecodeConfig, greedy_generate

    geometry = KVGeometry.of(model)
    kept = kept_tokens(len(cell.context_ids), ratio)
    # kvpress keeps K and V rows only: 2 * H_kv * D elements per token and layer
    layer_bytes = kept * 2 * geometry.num_kv_heads * geometry.head_dim * geometry.element_bytes
    config = our_config(model, policy, layer_bytes)
    result: dict[str, Any] = {"kept_tokens": kept, "params": config.to_dict()}
    with cache_from_config(model, config) as cache:
        if cell.kind == "answer":
            generation = greedy_generate(model, cache, list(cell.context_ids + cell.question_ids),
                                         DecodeConfig(chunk_size=chunk_size, max_new_tokens=cell.max_new_tokens), stop)
            result.update(tokens=generation.tokens, prefill_seconds=generation.prefill_seconds,
                          decode_seconds=generation.decode_seconds)
        else:
            context, continuation = torch.tensor([cell.context_ids]), torch.tensor([cell.continuation_ids])
            kwargs = cache_kwargs(model, cache)

            def prefill():
                for begin in range(0, context.shape[1], chunk_size):
                    model(input_ids=context[:, begin:begin + chunk_size], **kwargs, use_cache=True, logits_to_keep=1)

            _, result["prefill_seconds"] = _timed(prefill)
            logits, result["decode_seconds"] = _timed(lambda: model(input_ids=continuation, **kwargs, use_cache=True).logits)
            result["nll"] = _continuation_nll(logits, continuation)
        result["cache_bytes_end"] = cache.cache_bytes()
        result["cache_bytes_max"] = cache.high_water.bytes
        result["passive_bytes"] = cache.passive_bytes()
    return result


def measured(run) -> dict[str, Any]:
    """``run()``'s result with the peak RSS it added: the high-water mark is reset first (Linux
    clear_refs) and the RSS at the start is subtracted, so the figure is this cell's own."""
    reset_peak_memory(torch.device("cpu"))
    before = current_rss_bytes()
    result = run()
    result["peak_rss_delta_bytes"] = peak_rss_bytes() - before
    return result


def split_prompt(ids: Sequence[int], context_end: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(ids[:context_end]), tuple(ids[context_end:])
