"""Block summaries: a few numbers per (block, KV head) that the queries score blocks by.

Both work on position-free keys (RoPE undone). The queries that score them are rotated to the
distance at which the recalled tokens will be placed, so a summary's score approximates the
attention logit its block would get.

- :class:`RepresentativeKeys` (InfLLM, Xiao et al. 2024, arXiv:2402.04617): the block's ``r``
  tokens most attended by the recent queries; logit = the best dot product with any of them.
  With ``r = block_size`` every key represents itself: the block's exact best logit.
- :class:`MinMaxBounds` (Quest, Tang et al. 2024, arXiv:2406.10774): per-dimension min and max of
  the block's keys; logit = the upper bound ``sum_d max(q_d min_d, q_d max_d)`` of ``q . k``.

A block's score is the attention mass the queries would give it: each query's block logits
(scaled by ``1/sqrt(D)``) go through a softmax over the blocks, and the masses are summed over
the queries. Averaging raw logits instead let the many queries that look at no block in
particular drown the few that look for one (measured on SmolLM2 passkey prompts: the needle's
block was recalled no more often than a random one).
"""

from __future__ import annotations

import torch


def attention_mass(logits: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``(H_kv, Q, N)`` block logits -> ``(H_kv, N)``: softmax over the blocks of the scaled
    logits, summed over the queries."""
    return torch.softmax(logits * head_dim**-0.5, dim=-1).sum(dim=1)


class RepresentativeKeys:
    """Summary ``(H_kv, r, D)``: the keys with the largest dot product with ``query_hint``
    (the mean position-free query of the layer's last forward, per KV head), InfLLM's "most
    attended" tokens measured with the queries at hand when the block is sealed."""

    def __init__(self, representatives: int):
        self.representatives = representatives

    def summarize(self, keys: torch.Tensor, query_hint: torch.Tensor | None) -> torch.Tensor:
        """``keys`` ``(H_kv, bs, D)`` position-free, ``query_hint`` ``(H_kv, D)`` or ``None``."""
        if query_hint is None:  # no query seen yet: the keys with the largest norm
            weight = keys.float().norm(dim=-1)
        else:
            weight = torch.einsum("hbd,hd->hb", keys.float(), query_hint.to(keys.device, torch.float32))
        top = weight.topk(self.representatives, dim=-1).indices  # (H_kv, r)
        return keys.gather(1, top[..., None].expand(-1, -1, keys.shape[-1]))

    def score(self, summaries: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``summaries`` ``(N, H_kv, r, D)``, ``queries`` ``(H_kv, Q, D)`` -> ``(H_kv, N)``: mean over
        the queries of the best representative's dot product."""
        dots = torch.einsum("hqd,nhrd->hqnr", queries.float(), summaries.float())
        return attention_mass(dots.amax(dim=-1), queries.shape[-1])


class MinMaxBounds:
    """Summary ``(H_kv, 2, D)``: per-dimension min (row 0) and max (row 1) of the block's keys."""

    def summarize(self, keys: torch.Tensor, query_hint: torch.Tensor | None) -> torch.Tensor:
        return torch.stack([keys.amin(dim=1), keys.amax(dim=1)], dim=1)

    def score(self, summaries: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        # max(q_d min_d, q_d max_d) is q_d max_d where q_d >= 0 and q_d min_d where q_d < 0:
        # two matmuls instead of a (H, Q, N, D) product.
        q = queries.float()
        low, high = summaries[:, :, 0].float(), summaries[:, :, 1].float()  # (N, H, D)
        bound = torch.einsum("hqd,nhd->hqn", q.clamp(min=0), high) + torch.einsum("hqd,nhd->hqn", q.clamp(max=0), low)
        return attention_mass(bound, queries.shape[-1])


def make_summary(kind: str, representatives: int):
    if kind == "representative":
        return RepresentativeKeys(representatives)
    if kind == "minmax":
        return MinMaxBounds()
    raise ValueError(f"memory_summary must be 'representative' or 'minmax'; got {kind!r}")
