"""Block summaries: a few numbers per (block, KV head) that the queries score blocks by.

Both work on position-free keys (RoPE undone). The queries that score them are rotated to the
distance at which the recalled tokens will be placed, so a summary's score approximates the
attention logit its block would get.

- :class:`RepresentativeKeys` (InfLLM, Xiao et al. 2024, arXiv:2402.04617): the block's ``r``
  tokens most attended by the recent queries; logit = the best dot product with any of them.
  With ``r = block_size`` every key represents itself: the block's exact best logit.
- :class:`MinMaxBounds` (Quest, Tang et al. 2024, arXiv:2406.10774): per-dimension min and max of
  the block's keys; logit = the upper bound ``sum_d max(q_d min_d, q_d max_d)`` of ``q . k``.
- :class:`QuantizedKeys`: every key of the block at ``bits`` bits per element (per (head, token)
  absmax scale, fp16); logit = the best dot product with the dequantised keys. At 4 bits it costs
  ``D / 2 + 2`` bytes per key (34 of the 256 bytes of an fp32 key at ``D = 64``). Measured on SmolLM2
  (docs/results/memory/README.md): the 4 representatives and the min/max bounds recalled the
  passkey's block no better than chance, every key at 4 bits did as well as every key in fp32.

Each summary is a tuple of tensors with a leading ``(H_kv, ...)`` per block; a
:class:`SummaryBank` holds them for all blocks of a layer, ``(N, H_kv, ...)``, in buffers that grow
by doubling (concatenating at every sealed block copied the whole bank each time and fragmented
the allocator).

A block's score is the attention mass the queries would give it: each query's block logits
(scaled by ``1/sqrt(D)``) go through a softmax over the blocks, and the masses are summed over
the queries (or, ``query_reduce="max"``, the largest share any one query gives). A block's logit
comes from its keys' logits by ``block_score``: ``"max"`` takes the best key's, ``"sum"`` their
log-sum-exp, so that the softmax over blocks is the mass the query would give all of the block's
keys among every stored key (what attention over the whole store would give it; the
representative summary sums over its representatives only). Averaging raw logits instead let the
many queries that look at no block in particular drown the few that look for one (measured on
SmolLM2 passkey prompts: the needle's block was recalled no more often than a random one).
"""

from __future__ import annotations

import torch


BLOCK_SCORES = ("max", "sum")


def block_logits(dots: torch.Tensor, dim: int, head_dim: int, block_score: str) -> torch.Tensor:
    """Key logits ``dots`` (unscaled ``q . k``) -> one logit per block, reducing ``dim`` (the
    block's keys): the best key's (``"max"``) or the log-sum-exp of the scaled logits, unscaled
    again (``"sum"``), so that :func:`attention_mass` of the result is the keys' summed mass."""
    if block_score == "max":
        return dots.amax(dim=dim)
    if block_score == "sum":
        scale = head_dim**-0.5
        return torch.logsumexp(dots * scale, dim=dim) / scale
    raise ValueError(f"memory_block_score must be one of {', '.join(map(repr, BLOCK_SCORES))}; got {block_score!r}")


QUERY_REDUCES = ("sum", "max")


def attention_mass(logits: torch.Tensor, head_dim: int, query_reduce: str = "sum") -> torch.Tensor:
    """``(H_kv, Q, N)`` block logits -> ``(H_kv, N)``: softmax over the blocks of the scaled
    logits, summed over the queries (``query_reduce="sum"``) or the largest share any one query
    gives the block (``"max"``: a block that a single query looks for is not outvoted by the rest)."""
    shares = torch.softmax(logits * head_dim**-0.5, dim=-1)
    return shares.sum(dim=1) if query_reduce == "sum" else shares.amax(dim=1)


class RepresentativeKeys:
    """Summary ``(H_kv, r, D)``: the keys with the largest dot product with ``query_hint``
    (the mean position-free query of the layer's last forward, per KV head), InfLLM's "most
    attended" tokens measured with the queries at hand when the block is sealed."""

    uses_query_hint = True

    def __init__(self, representatives: int, block_score: str = "max", query_reduce: str = "sum"):
        self.representatives = representatives
        self.block_score, self.query_reduce = block_score, query_reduce

    def summarize(self, keys: torch.Tensor, query_hint: torch.Tensor | None) -> tuple[torch.Tensor]:
        """``keys`` ``(H_kv, bs, D)`` position-free, ``query_hint`` ``(H_kv, D)`` or ``None``."""
        if query_hint is None:  # no query seen yet: the keys with the largest norm
            weight = keys.float().norm(dim=-1)
        else:
            weight = torch.einsum("hbd,hd->hb", keys.float(), query_hint.to(keys.device, torch.float32))
        top = weight.topk(self.representatives, dim=-1).indices  # (H_kv, r)
        return (keys.gather(1, top[..., None].expand(-1, -1, keys.shape[-1])),)

    def score(self, summaries: tuple[torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """``summaries`` ``((N, H_kv, r, D),)``, ``queries`` ``(H_kv, Q, D)`` -> ``(H_kv, N)``: the
        attention mass of each block's representatives (their best or all, by ``block_score``)."""
        return key_mass(summaries[0], queries, self.block_score, self.query_reduce)


def key_mass(keys: torch.Tensor, queries: torch.Tensor, block_score: str = "max", query_reduce: str = "sum") -> torch.Tensor:
    """``keys`` ``(N, H_kv, r, D)`` -> ``(H_kv, N)``: attention mass of each block's keys, its best
    key's (``block_score="max"``) or all of them (``"sum"``), reduced over the queries by ``query_reduce``."""
    dots = torch.einsum("hqd,nhrd->hqnr", queries.float(), keys.float())
    return attention_mass(block_logits(dots, -1, queries.shape[-1], block_score), queries.shape[-1], query_reduce)


class MinMaxBounds:
    """Summary ``(H_kv, 2, D)``: per-dimension min (row 0) and max (row 1) of the block's keys."""

    uses_query_hint = False

    def __init__(self, query_reduce: str = "sum"):
        self.query_reduce = query_reduce

    def summarize(self, keys: torch.Tensor, query_hint: torch.Tensor | None) -> tuple[torch.Tensor]:
        return (torch.stack([keys.amin(dim=1), keys.amax(dim=1)], dim=1),)

    def score(self, summaries: tuple[torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        # max(q_d min_d, q_d max_d) is q_d max_d where q_d >= 0 and q_d min_d where q_d < 0:
        # two matmuls instead of a (H, Q, N, D) product.
        q = queries.float()
        low, high = summaries[0][:, :, 0].float(), summaries[0][:, :, 1].float()  # (N, H, D)
        bound = torch.einsum("hqd,nhd->hqn", q.clamp(min=0), high) + torch.einsum("hqd,nhd->hqn", q.clamp(max=0), low)
        return attention_mass(bound, queries.shape[-1], self.query_reduce)


class QuantizedKeys:
    """Summary ``(codes, scales)``: every key ``(H_kv, bs, D)`` quantised to ``bits`` bits, symmetric
    per (head, token): ``codes`` ``(H_kv, bs, D * bits / 8)`` uint8 (``8 // bits`` codes per byte,
    offset by ``2 ** (bits - 1)``), ``scales`` ``(H_kv, bs)`` fp16."""

    uses_query_hint = False

    def __init__(self, bits: int, block_score: str = "max", query_reduce: str = "sum"):
        if bits not in SUMMARY_BITS:
            raise ValueError(f"memory_summary_bits must be one of {', '.join(map(str, SUMMARY_BITS))}; got {bits!r}")
        self.bits = bits
        self.levels = 2 ** (bits - 1) - 1  # codes -levels .. levels, symmetric around 0
        self.block_score, self.query_reduce = block_score, query_reduce

    def summarize(self, keys: torch.Tensor, query_hint: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        keys = keys.float()
        scales = (keys.abs().amax(dim=-1) / self.levels).clamp(min=1e-8)
        codes = (keys / scales[..., None]).round().clamp(-self.levels, self.levels) + 2 ** (self.bits - 1)
        return pack(codes.to(torch.uint8), self.bits), scales.half()

    def dequantize(self, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """``codes`` ``(..., D * bits / 8)``, ``scales`` ``(...)`` -> keys ``(..., D)`` float32."""
        values = unpack(codes, self.bits).float() - 2 ** (self.bits - 1)
        return values * scales.float()[..., None]

    def score(self, summaries: tuple[torch.Tensor, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """``(H_kv, N)`` attention mass of each block's keys (the best or all, by ``block_score``),
        computed from the codes without unpacking them: ``q . k = scale * (sum_i q[i::p] . c_i - offset * sum(q))`` where ``c_i``
        are the codes in bit slot ``i`` of each byte (``p = 8 // bits`` per byte), one matmul per
        slot. Dequantising every key first was 4x slower on SmolLM2's decode (one query per head
        against every key of the store, at every step), where it dominated the step."""
        codes, scales = summaries
        blocks, heads, block_size, packed = codes.shape
        per_byte = 8 // self.bits
        flat = codes.transpose(0, 1).reshape(heads, blocks * block_size, packed)  # (H, N * bs, D / p), uint8
        q = queries.float()
        dots = None
        for slot in range(per_byte):
            slot_codes = flat if per_byte == 1 else (flat >> (slot * self.bits)) & (2**self.bits - 1)
            part = torch.bmm(slot_codes.float(), q[..., slot::per_byte].transpose(1, 2))  # (H, N * bs, Q)
            dots = part if dots is None else dots + part
        dots = (dots - 2 ** (self.bits - 1) * q.sum(dim=-1)[:, None, :]) * scales.transpose(0, 1).reshape(
            heads, blocks * block_size, 1).float()
        per_block = block_logits(dots.view(heads, blocks, block_size, -1), 2, queries.shape[-1], self.block_score)
        return attention_mass(per_block.transpose(1, 2), queries.shape[-1], self.query_reduce)  # (H, N, Q) -> (H, N)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``(..., D)`` uint8 codes below ``2 ** bits`` -> ``(..., D * bits / 8)``: ``8 // bits`` per byte."""
    per_byte = 8 // bits
    grouped = codes.reshape(*codes.shape[:-1], -1, per_byte)
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.uint8) * bits
    return (grouped << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.uint8) * bits
    codes = (packed[..., None] >> shifts) & (2**bits - 1)
    return codes.reshape(*packed.shape[:-1], -1)


SUMMARY_BITS = (2, 4, 8)


class SummaryBank:
    """The summaries of one layer's blocks: one buffer ``(capacity, H_kv, ...)`` per summary part,
    grown by doubling; :attr:`count` blocks are filled, in store order."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []
        self.count = 0

    def append(self, summary: tuple[torch.Tensor, ...]) -> None:
        if not self.parts:
            self.parts = [torch.empty((4, *part.shape), dtype=part.dtype, device=part.device) for part in summary]
        if self.count == self.parts[0].shape[0]:
            self.parts = [torch.cat([buffer, torch.empty_like(buffer)]) for buffer in self.parts]
        for buffer, part in zip(self.parts, summary):
            buffer[self.count] = part
        self.count += 1

    def drop(self, index: int) -> None:
        """Remove block ``index``; the later ones move up one place."""
        for buffer in self.parts:
            buffer[index : self.count - 1] = buffer[index + 1 : self.count].clone()
        self.count -= 1

    def first(self, blocks: int) -> tuple[torch.Tensor, ...]:
        """Summaries ``(blocks, H_kv, ...)`` of the first ``blocks`` blocks (views, no copy)."""
        return tuple(buffer[:blocks] for buffer in self.parts)

    def __len__(self) -> int:
        return self.count

    def nbytes(self) -> int:
        """Resident bytes: the whole buffers, the capacity not yet filled included."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self.parts)


def make_summary(kind: str, representatives: int, bits: int = 4, block_score: str = "max", query_reduce: str = "sum"):
    if kind == "representative":
        return RepresentativeKeys(representatives, block_score, query_reduce)
    if kind == "minmax":  # one bound per block: block_score has nothing to reduce (MemoryConfig refuses "sum")
        return MinMaxBounds(query_reduce)
    if kind == "quantized":
        return QuantizedKeys(bits, block_score, query_reduce)
    raise ValueError(f"memory_summary must be 'representative', 'minmax' or 'quantized'; got {kind!r}")
