"""``MemoryConfig``: the parameters of the external (passive) memory tier, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..checks import check_int
from .guide import parse_layer_range
from .summaries import BLOCK_SCORES, QUERY_REDUCES, SUMMARY_BITS

SUMMARIES = ("representative", "minmax", "quantized")
PLACEMENTS = ("beyond_window", "ordered")
SELECTIONS = ("head", "layer")
SCORERS = ("queries", "keys")
CENTERINGS = ("none", "mean", "split")
STORE_DTYPES = ("model", "int8")


@dataclass(frozen=True)
class MemoryConfig:
    """Parameters
    ----------
    block_size:
        Evicted tokens per passive block (>= 1). Blocks are per KV head; a block is sealed, and
        can be recalled, once every head has evicted ``block_size`` tokens since the last one.
    recall_blocks:
        Blocks recalled per layer and KV head into each forward's attention (>= 0; 0 = offload only).
    summary:
        How a block is scored by the queries: ``"representative"`` (InfLLM: the block's
        ``representatives`` tokens most attended by the recent queries, scored by their best dot
        product) or ``"minmax"`` (Quest: per-dimension min/max key bounds, scored by the upper bound
        ``sum_d max(q_d min_d, q_d max_d)``) or ``"quantized"`` (every key of the block at
        ``summary_bits`` bits, scored by its best dot product).
    summary_bits:
        Bits per key element of ``summary="quantized"``: one of 2, 4, 8.
    representatives:
        Representative keys per block for ``summary="representative"`` (1 .. block_size).
    block_score:
        How a block's key logits make its logit: ``"max"`` (the best key's) or ``"sum"`` (their
        log-sum-exp: the mass attention over the whole store would give the block's keys). Not
        for ``summary="minmax"``, which has one bound per block.
    query_reduce:
        How the scoring queries' shares of a block combine: ``"sum"`` (their total) or ``"max"``
        (the largest share any one query gives it).
    score_with:
        What scores the blocks: ``"queries"`` (this forward's last ``score_queries`` queries, at the
        distance the recalled tokens will be placed) or ``"keys"`` (its last ``score_queries`` keys,
        position-free like the stored ones: a content match, the new tokens against the old).
    query_centering:
        ``"none"``, or ``"mean"``: the scoring queries minus the mean position-free query this layer
        has seen over the stream (per query head), so that keys every query attends to (tokens that
        act as attention sinks inside the store) do not outbid the keys this query looks for. A
        constant added to every key logit of one query would not change its softmax, so centering
        the keys would change nothing; centering the queries removes from each key's logit the
        part ``mean_q . k`` that any query would give it. ``"split"``: half the recall (rounded up) by
        the queries as they are, the rest by the centred queries, among the blocks not yet chosen.
        Only with ``score_with="queries"``.
    select_per:
        ``"head"``: each KV head recalls the blocks its own queries score highest; ``"layer"``: the
        scores are summed over the layer's KV heads and every head recalls the same blocks (a block
        that one head finds is recalled in all; same bytes).
    placement:
        Positions of the recalled tokens: ``"beyond_window"`` (InfLLM: every recalled token at one
        position, just before the oldest active slot) or ``"ordered"`` (recalled tokens in their
        original order at contiguous positions ending just before the oldest active slot).
    recall_interval:
        Forwards (prefill chunks or decode steps) a selection is reused for (>= 1; 1 = select every forward).
    lru_blocks:
        Blocks per layer and KV head kept on the active device, the most recently recalled
        (>= recall_blocks; ``None`` = recall_blocks). They are the recall slots counted in the active bytes.
    passive_blocks:
        Most blocks the passive store keeps per layer (``None`` = unbounded); beyond it the
        least-recalled block is dropped (the oldest among equals). Must be >= recall_blocks.
    store_dtype:
        ``"model"`` (the model's dtype) or ``"int8"`` (per-token absmax int8 rows plus one scale each).
    score_queries:
        Queries per KV head group a prefill chunk scores blocks with: its last ``score_queries`` (>= 1).
    guide_layers:
        ``None``, or ``"FIRST-LAST"`` (0-based, inclusive): those layers choose the recall of every
        layer after them, which recall the blocks the guides' summed scores rank first (see
        :mod:`.guide`). Must end before the model's last layer; only for policies that evict alike
        in every layer and head (streaming, sliding_window), and not with ``query_centering="split"``.
    last_query_blocks:
        Of the ``recall_blocks``, how many a forward chooses by its last query alone (with
        ``guide_layers``, by the guides' last-query sum); the rest by its last ``score_queries``
        queries, among the blocks not chosen yet (0 = off, every block by ``score_queries``). Why:
        a question's last token finds the block it asks about where 64 queries do not (the guided
        recall with ``score_queries=1``), but a chunk scored by one query recalls for that query
        only, and the chunk's other tokens, whose predictions perplexity counts, lose. Only with
        ``score_with="queries"`` and ``query_centering`` ``"none"`` or ``"mean"``; at most ``recall_blocks``.
    """

    block_size: int = 64
    recall_blocks: int = 4
    summary: Literal["representative", "minmax", "quantized"] = "quantized"
    summary_bits: int = 4
    representatives: int = 4
    block_score: Literal["max", "sum"] = "max"
    query_reduce: Literal["sum", "max"] = "sum"
    score_with: Literal["queries", "keys"] = "queries"
    query_centering: Literal["none", "mean", "split"] = "none"
    select_per: Literal["head", "layer"] = "head"
    placement: Literal["beyond_window", "ordered"] = "beyond_window"
    recall_interval: int = 1
    lru_blocks: int | None = None
    passive_blocks: int | None = None
    store_dtype: Literal["model", "int8"] = "model"
    score_queries: int = 64
    guide_layers: str | None = None
    last_query_blocks: int = 0

    def __post_init__(self) -> None:
        check_int("memory_block_size", self.block_size, 1)
        check_int("memory_recall_blocks", self.recall_blocks, 0)
        _check_choice("memory_summary", self.summary, SUMMARIES)
        _check_choice("memory_summary_bits", self.summary_bits, SUMMARY_BITS)
        check_int("memory_representatives", self.representatives, 1)
        if self.representatives > self.block_size:
            raise ValueError(f"memory_representatives must be <= memory_block_size ({self.block_size}); "
                             f"got {self.representatives}")
        _check_choice("memory_block_score", self.block_score, BLOCK_SCORES)
        if self.block_score == "sum" and self.summary == "minmax":
            raise ValueError("memory_block_score='sum' needs a summary with keys to sum over: "
                             "memory_summary 'representative' or 'quantized' (minmax keeps one bound per block)")
        _check_choice("memory_query_reduce", self.query_reduce, QUERY_REDUCES)
        _check_choice("memory_select_per", self.select_per, SELECTIONS)
        _check_choice("memory_score_with", self.score_with, SCORERS)
        _check_choice("memory_query_centering", self.query_centering, CENTERINGS)
        if self.query_centering != "none" and self.score_with != "queries":
            raise ValueError("memory_query_centering centres the scoring queries: it needs memory_score_with='queries'; "
                             f"got memory_score_with={self.score_with!r}")
        _check_choice("memory_placement", self.placement, PLACEMENTS)
        check_int("memory_recall_interval", self.recall_interval, 1)
        if self.lru_blocks is not None:
            check_int("memory_lru_blocks", self.lru_blocks, max(self.recall_blocks, 1))
        if self.passive_blocks is not None:
            check_int("memory_passive_blocks", self.passive_blocks, 1)
            if self.passive_blocks < self.recall_blocks:
                raise ValueError(
                    f"memory_recall_blocks={self.recall_blocks} is more than the passive store holds "
                    f"(memory_passive_blocks={self.passive_blocks}); allowed: recall_blocks <= passive_blocks"
                )
        _check_choice("memory_store_dtype", self.store_dtype, STORE_DTYPES)
        check_int("memory_score_queries", self.score_queries, 1)
        if self.guide_layers is not None:
            parse_layer_range("memory_guide_layers", self.guide_layers)
            if self.query_centering == "split":
                raise ValueError("memory_guide_layers sums one score per block and layer; memory_query_centering='split' "
                                 "scores twice: use 'none' or 'mean' with it")
        check_int("memory_last_query_blocks", self.last_query_blocks, 0)
        if self.last_query_blocks > self.recall_blocks:
            raise ValueError(f"memory_last_query_blocks must be <= memory_recall_blocks ({self.recall_blocks}); "
                             f"got {self.last_query_blocks}")
        if self.last_query_blocks and (self.score_with != "queries" or self.query_centering == "split"):
            raise ValueError("memory_last_query_blocks splits the recall between the last query and the scoring queries: "
                             "it needs memory_score_with='queries' and memory_query_centering 'none' or 'mean'; "
                             f"got memory_score_with={self.score_with!r}, memory_query_centering={self.query_centering!r}")

    @property
    def device_blocks(self) -> int:
        """Blocks per layer and KV head resident on the active device (the recall slots)."""
        return self.recall_blocks if self.lru_blocks is None else self.lru_blocks

    @property
    def recall_slots(self) -> int:
        """Slots per layer the recall tier holds on the active device."""
        return self.device_blocks * self.block_size


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
