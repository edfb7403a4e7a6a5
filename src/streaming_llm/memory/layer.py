"""``LayerMemory``: one decoder layer's passive store, its block summaries and its recall.

The cache layer hands it the slots its policy evicts (:meth:`LayerMemory.offload`, from
``BoundedLayer._keep``); the attention hook asks it, with this forward's queries, for the recalled
keys and values to attend to next to the active slots (:meth:`LayerMemory.recall`).
"""

from __future__ import annotations

import torch

from ..protocol import POSITION_BYTES, SlotRewrite
from .config import MemoryConfig
from .placement import recall_positions
from .store import BlockStore
from .summaries import SummaryBank, make_summary


def evicted_rows(keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, keep,
                 already: torch.Tensor | None = None):
    """The rows of ``keys``/``values`` ``(1, H_kv, T, D)`` and their positions that selection
    ``keep`` drops: the complement of the kept indices (``(T',)`` or ``(H_kv, T')``), or for a
    :class:`SlotRewrite` the stored positions that no new row carries and that ``already``
    ``(H_kv, P)`` (positions offloaded before) does not mark. ``None`` when nothing leaves.

    Returns ``(keys, values, positions)``: tensors ``(H_kv, E, D)``, ``(H_kv, E, D)``, ``(H_kv, E)``
    when every head drops as many rows (the usual case: one gather, no per-head split), else
    lists with one ``(E_h, D)``, ``(E_h, D)``, ``(E_h,)`` entry per head."""
    heads, total = positions.shape
    if isinstance(keep, SlotRewrite):
        leaving = torch.stack([~torch.isin(positions[h], keep.positions[h].cpu()) for h in range(heads)])
        if already is not None:
            inside = positions.clamp(max=already.shape[-1] - 1)
            leaving &= ~(already.gather(-1, inside) & (positions < already.shape[-1]))
    elif keep.dim() == 1:
        leaving = torch.ones(total, dtype=torch.bool)
        leaving[keep.cpu()] = False
        leaving = leaving.expand(heads, total)
    else:
        leaving = torch.ones(heads, total, dtype=torch.bool).scatter_(1, keep.cpu(), False)
    counts = leaving.sum(dim=1)
    if int(counts.max()) == 0:
        return None
    if bool((counts == counts[0]).all()):
        index = leaving.nonzero()[:, 1].view(heads, -1)  # row-major: each head's rows in order
        device_index = index.to(keys.device)[..., None].expand(-1, -1, keys.shape[-1])
        return keys[0].gather(1, device_index), values[0].gather(1, device_index), positions.gather(1, index)
    per_head = []
    for head in range(heads):
        index = leaving[head].nonzero().flatten()
        device_index = index.to(keys.device)
        per_head.append((keys[0, head].index_select(0, device_index), values[0, head].index_select(0, device_index),
                         positions[head, index]))
    return tuple(list(column) for column in zip(*per_head))


class DeviceLRU:
    """Per KV head, ``capacity`` block slots on the active device holding the blocks recalled
    most recently, so a block recalled again is not copied again."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: torch.Tensor | None = None  # (H_kv, C, bs, D)
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # (H_kv, C, bs) original positions, CPU
        self.slot_of: list[dict[int, int]] = []  # per head: block id -> slot
        self.last_used: list[list[int]] = []
        self.clock = 0

    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return (self.keys.numel() * self.keys.element_size() * 2) + self.positions.numel() * POSITION_BYTES

    def _allocate(self, heads: int, block_size: int, head_dim: int, device, dtype) -> None:
        self.keys = torch.zeros(heads, self.capacity, block_size, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.zeros(heads, self.capacity, block_size, dtype=torch.long)
        self.slot_of = [{} for _ in range(heads)]
        self.last_used = [[-1] * self.capacity for _ in range(heads)]

    def fetch(self, store: BlockStore, selection: torch.Tensor, head_dim: int, device, dtype) -> dict[str, int]:
        """Make the blocks ``selection`` ``(H_kv, k)`` (store indices) resident; returns the
        hits, misses and bytes moved. Read them with :meth:`gather`."""
        heads = selection.shape[0]
        if self.keys is None:
            self._allocate(heads, store.block_size, head_dim, device, dtype)
        self.clock += 1
        counts = {"lru_hits": 0, "lru_misses": 0, "bytes_moved": 0}
        self._slots = torch.empty_like(selection)
        for head in range(heads):
            wanted = [store.ids[i] for i in selection[head].tolist()]
            slot_of, last_used = self.slot_of[head], self.last_used[head]
            for column, (index, block_id) in enumerate(zip(selection[head].tolist(), wanted)):
                slot = slot_of.get(block_id)
                if slot is None:
                    busy = {slot_of[b] for b in wanted if b in slot_of}
                    slot = min((s for s in range(self.capacity) if s not in busy), key=last_used.__getitem__)
                    for stale in [b for b, s in slot_of.items() if s == slot]:
                        del slot_of[stale]
                    keys, moved_k = store.keys[index].head(head, device, dtype)
                    values, moved_v = store.values[index].head(head, device, dtype)
                    self.keys[head, slot], self.values[head, slot] = keys, values
                    self.positions[head, slot] = store.positions[index][head]
                    slot_of[block_id] = slot
                    counts["lru_misses"] += 1
                    counts["bytes_moved"] += moved_k + moved_v + store.block_size * POSITION_BYTES
                else:
                    counts["lru_hits"] += 1
                last_used[slot] = self.clock
                self._slots[head, column] = slot
        return counts

    def gather(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The blocks of the last :meth:`fetch`: keys, values ``(H_kv, k * bs, D)`` and original
        positions ``(H_kv, k * bs)``, blocks in selection order."""
        heads, k = self._slots.shape
        rows = torch.arange(heads)[:, None]
        slots = self._slots
        keys = self.keys[rows, slots.to(self.keys.device)].reshape(heads, -1, self.keys.shape[-1])
        values = self.values[rows, slots.to(self.keys.device)].reshape(heads, -1, self.values.shape[-1])
        positions = self.positions[rows, slots].reshape(heads, -1)
        return keys, values, positions

    def forget(self) -> None:
        """Drop every resident block (the store's indices changed)."""
        self.slot_of = [{} for _ in self.slot_of]


class QueryMean:
    """Running mean of a layer's position-free queries over the stream, per query head ``(H_q, D)``
    float32 (``memory_query_centering``, and the probe's ``--ranks``)."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, free_queries: torch.Tensor) -> None:
        """``free_queries`` ``(1, H_q, L, D)``, RoPE undone."""
        total = free_queries[0].float().sum(dim=1)
        self.total = total if self.total is None else self.total + total
        self.count += free_queries.shape[-2]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count


class LayerMemory:
    """Passive store + summaries + device LRU of one layer, re-positioning keys with ``strategy``."""

    def __init__(self, config: MemoryConfig, strategy):
        self.config = config
        self.strategy = strategy
        # diagnostics only (benchmarks/memory_probe.py --oracle): ``(scores (H_kv, N), store) ->
        # scores`` applied before the top-k, e.g. to force the blocks that hold a known needle
        self.score_adjust = None
        # diagnostics only (memory_probe.py --ranks): called as ``(query, first, available, seen_tokens)``
        # with each forward's queries before they score the blocks, to rank the blocks by other rules
        self.score_observer = None
        # memory_guide_layers: the cache's shared RecallGuide and this layer's index (attach_memory)
        self.guide = None
        self.layer_index: int | None = None
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.store = BlockStore(config.block_size, int8=config.store_dtype == "int8")
        self.summarizer = make_summary(config.summary, config.representatives, config.summary_bits, config.block_score,
                                       config.query_reduce)
        self.summaries = SummaryBank()  # one summary per sealed block, on the active device
        self.lru = DeviceLRU(config.device_blocks)
        self.query_hint: torch.Tensor | None = None  # (H_kv, D) mean position-free query of the last forward
        self.query_mean = QueryMean()  # kept with query_centering only
        self._selection: torch.Tensor | None = None
        self._selection_age = 0
        self._offloaded: torch.Tensor | None = None  # (H_kv, P) bool, for rewriting policies
        self.kv_heads: int | None = None  # known from the first offload
        if self.guide is not None:
            self.guide.reset()
        self.counters = {"offloaded_slots": 0, "recall_forwards": 0, "recalled_blocks": 0, "lru_hits": 0,
                         "lru_misses": 0, "bytes_moved": 0, "dropped_blocks": 0}

    # -- offload --------------------------------------------------------------------------
    def offload(self, layer, keep) -> None:
        """Store the slots ``keep`` drops from ``layer`` (before the layer applies it)."""
        if keep is None or not layer.is_initialized:
            return
        if layer.keys.is_cuda:
            self.store.pin = True
        self.kv_heads = layer.positions.shape[0]
        rewrite = isinstance(keep, SlotRewrite)
        rows = evicted_rows(layer.keys, layer.values, layer.positions, keep, self._offloaded if rewrite else None)
        if rows is None:
            return
        keys, values, positions = rows
        if rewrite:
            self._mark_offloaded(positions, layer.seen_tokens)
        # undo RoPE: rotate each key back by its own position, so it can be placed anywhere later
        if isinstance(positions, torch.Tensor):  # every head evicts as many: one rotation for all
            keys = list(self.strategy.shift_keys(keys[None], -positions)[0].cpu().unbind(0))
            values, positions = list(values.cpu().unbind(0)), list(positions.unbind(0))
        else:
            keys = [self.strategy.shift_keys(k[None, None], -p)[0, 0].cpu() for k, p in zip(keys, positions)]
            values = [v.cpu() for v in values]
        self.counters["offloaded_slots"] += sum(int(p.numel()) for p in positions)
        self.store.add(keys, values, positions)
        self._seal_full_blocks(layer)

    def _mark_offloaded(self, positions, seen_tokens: int) -> None:
        """Mark ``positions`` (per KV head) as offloaded, so a rewriting policy's later drop of
        the same token is not stored twice."""
        heads = len(positions)
        if self._offloaded is None or self._offloaded.shape[-1] < seen_tokens:
            grown = torch.zeros(heads, max(seen_tokens, 2 * (0 if self._offloaded is None else self._offloaded.shape[-1])),
                                dtype=torch.bool)
            if self._offloaded is not None:
                grown[:, : self._offloaded.shape[-1]] = self._offloaded
            self._offloaded = grown
        for head, p in enumerate(positions):
            self._offloaded[head, p] = True

    def _seal_full_blocks(self, layer) -> None:
        while (block := self.store.take_block()) is not None:
            keys, values, positions = block
            self.summaries.append(self.summarizer.summarize(keys.to(layer.device), self.query_hint))
            self.store.seal(keys, values, positions, layer.seen_tokens)
            passive = self.config.passive_blocks
            if passive is not None and len(self.store) > passive:
                self.summaries.drop(self.store.drop_least_recalled())
                self.counters["dropped_blocks"] += 1
                self._selection = None
                self.lru.forget()

    # -- recall ---------------------------------------------------------------------------
    def recall(self, layer, query: torch.Tensor, active_slots: int,
               current_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Recalled ``(1, H_kv, R, D)`` keys (placed, see :mod:`.placement`) and values for this
        forward's ``query`` ``(1, H_q, q, D)`` (rotated at its absolute positions, the last of them
        at ``seen - 1``), or ``None``. ``active_slots``: slots the layer returned for this forward;
        ``current_keys`` ``(1, H_kv, q, D)``: this forward's own keys, at the queries' positions
        (read with ``score_with="keys"``)."""
        config = self.config
        queries = query[..., -config.score_queries :, :]
        self._update_query_hint(queries, layer.seen_tokens)
        centring_queries = None  # position-free, un-rotated once: the mean and the centred scores read them
        if config.query_centering != "none":
            free = self.position_free(query, layer.seen_tokens)
            self.query_mean.add(free)
            centring_queries = free[..., -config.score_queries :, :]
        available = self.store.recallable(layer.seen_tokens)
        if config.recall_blocks == 0 or available == 0:
            return None
        first = layer.seen_tokens - active_slots  # position the oldest active slot is presented at
        if config.score_with == "keys" and current_keys is None:
            raise ValueError("memory_score_with='keys' needs this forward's keys: pass current_keys to recall()")
        if self.score_observer is not None:
            self.score_observer(query, first, available, layer.seen_tokens)
        selection = self._select(queries, current_keys, first, available, layer.seen_tokens, centring_queries)
        counts = self.lru.fetch(self.store, selection, query.shape[-1], query.device, layer.dtype)
        for name, value in counts.items():
            self.counters[name] += value
        keys, values, original = self.lru.gather()
        order, target = recall_positions(config.placement, original, first)
        if order is not None:
            device_order = order.to(keys.device)[..., None].expand(-1, -1, keys.shape[-1])
            keys, values = keys.gather(1, device_order), values.gather(1, device_order)
        placed = self.strategy.shift_keys(keys[None], target)
        return placed, values[None]

    def _grouped(self, queries: torch.Tensor) -> torch.Tensor:
        """``(1, H_q, L, D)`` -> ``(H_kv, G * L, D)``: query head ``h`` reads KV head ``h // G``."""
        _, heads, length, dim = queries.shape
        return queries[0].reshape(self.kv_heads, (heads // self.kv_heads) * length, dim)

    def _update_query_hint(self, queries: torch.Tensor, seen_tokens: int) -> None:
        if self.kv_heads is None or not self.summarizer.uses_query_hint:
            # nothing offloaded yet (the KV head count is not known and no block needs a hint), or a
            # summary that never reads it: un-rotating the queries cost a RoPE pass every forward
            return
        self.query_hint = self._grouped(self.position_free(queries, seen_tokens)).float().mean(dim=1)

    def position_free(self, vectors: torch.Tensor, seen_tokens: int) -> torch.Tensor:
        """``(1, H, L, D)`` queries or keys of this forward (rotated at positions ``seen - L .. seen - 1``)
        with RoPE undone."""
        length = vectors.shape[-2]
        return self.strategy.shift_keys(vectors, -torch.arange(seen_tokens - length, seen_tokens))

    def scoring_vectors(self, queries: torch.Tensor, current_keys: torch.Tensor | None, first: int,
                         seen_tokens: int, centring_queries: torch.Tensor | None = None) -> torch.Tensor:
        """``(H_kv, L, D)`` vectors the summaries are scored with: this forward's last queries,
        rotated so that a position-free key scores as if placed at ``first - 1``, or
        (``score_with="keys"``) its last keys, position-free like the stored ones, or, given
        ``centring_queries`` (the last queries, position-free), those centred (:meth:`centred_vectors`)."""
        if self.config.score_with == "keys":
            # content against content: both position-free, so the match does not depend on distance
            return self.position_free(current_keys[..., -self.config.score_queries :, :], seen_tokens)[0]
        length = queries.shape[-2]
        if centring_queries is not None:
            return self.centred_vectors(centring_queries, self.query_mean.mean, first, seen_tokens)
        at_distance = self.strategy.shift_keys(queries, torch.full((length,), -(first - 1), dtype=torch.long))
        return self._grouped(at_distance)

    def centred_vectors(self, free_queries: torch.Tensor, mean: torch.Tensor, first: int, seen_tokens: int) -> torch.Tensor:
        """``(H_kv, L, D)``: ``free_queries`` ``(1, H_q, L, D)`` (this forward's last queries with RoPE
        undone) minus ``mean`` ``(H_q, D)``, each then rotated back to its position's distance from
        ``first - 1``, where the recalled keys are scored."""
        length = free_queries.shape[-2]
        centred = free_queries - mean.to(free_queries.dtype)[None, :, None, :]
        return self._grouped(self.strategy.shift_keys(centred, torch.arange(seen_tokens - length, seen_tokens) - (first - 1)))

    def _select(self, queries: torch.Tensor, current_keys: torch.Tensor | None, first: int, available: int,
                seen_tokens: int, centring_queries: torch.Tensor | None = None) -> torch.Tensor:
        """Store indices ``(H_kv, k)`` of the blocks to recall: the last selection while it is
        younger than ``recall_interval`` forwards, else the top-scored (see :meth:`scoring_vectors`)."""
        config = self.config
        self.counters["recall_forwards"] += 1
        if self._selection is not None and self._selection_age + 1 < config.recall_interval:
            self._selection_age += 1
            return self._selection
        k = min(config.recall_blocks, available)
        centring = config.query_centering
        scores = self._scores(queries, current_keys, first, available, seen_tokens,
                              centring_queries if centring == "mean" else None)
        if centring == "split":  # the first half by the plain queries, the rest by the centred ones
            plain = self._top(scores, (k + 1) // 2)
            centred = self._scores(queries, current_keys, first, available, seen_tokens, centring_queries)
            selection = self._top_after(plain, centred, k)
        elif config.last_query_blocks and queries.shape[-2] > 1:  # some by the last query alone, the rest by all (one query: the same)
            last = self._scores(queries[..., -1:, :], current_keys, first, available, seen_tokens,
                                None if centring_queries is None else centring_queries[..., -1:, :], channel="last")
            selection = self._top_after(self._top(last, min(config.last_query_blocks, k)), scores, k)
        else:
            selection = self._top(scores, k)
        for index in selection.unique().tolist():
            self.store.recalls[index] += 1
        self.counters["recalled_blocks"] += selection.numel()
        self._selection, self._selection_age = selection, 0
        return selection

    def _scores(self, queries: torch.Tensor, current_keys: torch.Tensor | None, first: int, available: int,
                seen_tokens: int, centring_queries: torch.Tensor | None, channel: str = "main") -> torch.Tensor:
        """``(H_kv, N)`` scores of the first ``available`` blocks (see :meth:`scoring_vectors`);
        ``channel``: the guide's sum they join and are ranked by."""
        vectors = self.scoring_vectors(queries, current_keys, first, seen_tokens, centring_queries)
        scores = self.summarizer.score(self.summaries.first(available), vectors)
        if self.score_adjust is not None:
            scores = self.score_adjust(scores, self.store)
        return scores if self.guide is None else self.guide.adjust(self.layer_index, scores, channel)

    def _top_after(self, chosen: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        """``chosen`` ``(H_kv, j)`` then the ``k - j`` best of ``scores`` among the blocks not chosen."""
        scores = scores.scatter(-1, chosen.to(scores.device), float("-inf"))
        return torch.cat([chosen, self._top(scores, k - chosen.shape[-1])], dim=-1)

    def _top(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """Store indices ``(H_kv, k)`` (CPU) of the ``k`` best-scored blocks, per KV head or
        (``select_per="layer"``) one choice for every KV head: the blocks the heads find together."""
        if self.config.select_per == "layer":
            return scores.sum(dim=0).topk(k).indices.cpu().expand(scores.shape[0], -1)
        return scores.topk(k, dim=-1).indices.cpu()

    def selected_positions(self) -> list[list[torch.Tensor]] | None:
        """Per KV head, the original positions ``(bs,)`` of each block the current selection
        recalls (CPU), or ``None`` before the first selection: what a probe reads to tell whether a
        given token was recalled."""
        if self._selection is None:
            return None
        return [[self.store.positions[index][head] for index in row]
                for head, row in enumerate(self._selection.tolist())]

    # -- bytes and counters ---------------------------------------------------------------
    def active_bytes(self) -> int:
        """Bytes the recall tier holds on the active device: the LRU's block slots (what attention reads)."""
        return self.lru.nbytes()

    def summary_bytes(self) -> int:
        return self.summaries.nbytes()

    def passive_bytes(self) -> int:
        """Bytes of the passive store: blocks, pending rows, positions, summaries."""
        marks = 0 if self._offloaded is None else self._offloaded.numel()
        return self.store.nbytes() + self.summary_bytes() + marks

    def stats(self) -> dict[str, float]:
        return {**self.counters, "passive_bytes": self.passive_bytes(), "summary_bytes": self.summary_bytes(),
                "passive_blocks": len(self.store)}
