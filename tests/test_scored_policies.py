"""Attention-scored policies against slow, literal reference implementations on random attention,
plus their budgets on a tiny model."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from streaming_llm import make_cache, make_policy_config
from streaming_llm.policies.base import SlotView

KV_HEADS, GROUP = 2, 3


def drive(policy, chunks, seed=0):
    """Feed random attention to ``policy`` as a cache layer would; yields kept positions per KV head."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.empty(KV_HEADS, 0, dtype=torch.long)
    seen = 0
    for q in chunks:
        positions = torch.cat([positions, torch.arange(seen, seen + q).expand(KV_HEADS, q)], dim=-1)
        seen += q
        n = positions.shape[-1]
        logits = torch.randn(1, KV_HEADS * GROUP, q, n, generator=generator)
        probs = torch.softmax(logits, dim=-1)
        keep = policy.observe(probs, SlotView(positions, seen, q))
        if keep is not None:
            positions = positions[:, keep] if keep.dim() == 1 else positions.gather(-1, keep)
        yield probs, [row.tolist() for row in positions]


def reference_h2o(chunks, heavy, recent, seed=0):
    """Per KV head: every slot's score += attention it receives (mean over the head's query group,
    summed over the step's queries); evict the lowest-scored slot outside the recent window
    until the budget holds."""
    generator = torch.Generator().manual_seed(seed)
    kept = [[] for _ in range(KV_HEADS)]
    score = [{} for _ in range(KV_HEADS)]
    seen = 0
    for q in chunks:
        for h in range(KV_HEADS):
            kept[h] += list(range(seen, seen + q))
        seen += q
        n = len(kept[0])
        probs = torch.softmax(torch.randn(1, KV_HEADS * GROUP, q, n, generator=generator), dim=-1)
        for h in range(KV_HEADS):
            for j, position in enumerate(kept[h]):
                received = sum(probs[0, h * GROUP + g, i, j].item() for g in range(GROUP) for i in range(q)) / GROUP
                score[h][position] = score[h].get(position, 0.0) + received
            while len(kept[h]) > heavy + recent:
                candidates = kept[h][: len(kept[h]) - recent]
                kept[h].remove(min(candidates, key=lambda p: score[h][p]))
        yield [list(row) for row in kept]


def reference_tova(chunks, cache_size, seed=0):
    """Layer-wise: rank slots by the last query's attention averaged over all heads; drop the lowest."""
    generator = torch.Generator().manual_seed(seed)
    kept, seen = [], 0
    for q in chunks:
        kept += list(range(seen, seen + q))
        seen += q
        probs = torch.softmax(torch.randn(1, KV_HEADS * GROUP, q, len(kept), generator=generator), dim=-1)
        score = {p: probs[0, :, -1, j].mean().item() for j, p in enumerate(kept)}
        while len(kept) > cache_size:
            kept.remove(min(kept, key=score.get))
        yield [list(kept) for _ in range(KV_HEADS)]


@pytest.mark.parametrize("chunks", [[1] * 60, [7, 1, 1, 12, 1, 5, 1, 1, 20, 3] * 3])
@pytest.mark.parametrize("heavy,recent", [(6, 4), (0, 5), (10, 1)])
def test_h2o_matches_reference(chunks, heavy, recent):
    policy = make_policy_config("h2o", heavy_size=heavy, recent_size=recent).build_layer_policy(0, 1)
    for (_, got), expected in zip(drive(policy, chunks), reference_h2o(chunks, heavy, recent)):
        assert got == expected
        assert len(got[0]) <= heavy + recent


@pytest.mark.parametrize("chunks", [[1] * 60, [9, 1, 1, 4, 1, 1, 15, 2] * 3])
@pytest.mark.parametrize("cache_size", [1, 8, 17])
def test_tova_matches_reference(chunks, cache_size):
    policy = make_policy_config("tova", cache_size=cache_size).build_layer_policy(0, 1)
    for (_, got), expected in zip(drive(policy, chunks), reference_tova(chunks, cache_size)):
        assert got == expected


@pytest.mark.parametrize("policy,params,budget", [
    ("h2o", dict(heavy_size=6, recent_size=10), 16),
    ("tova", dict(cache_size=16), 16),
])
def test_scored_budgets_hold_on_a_model(token_stream, policy, params, budget):
    model = tiny_model("llama")
    with make_cache(model, policy, **params) as cache, torch.no_grad():
        model(input_ids=token_stream[:, :40], past_key_values=cache, use_cache=True)  # prefill past the budget
        assert max(cache.cache_tokens()) <= budget
        for t in range(40, 100):
            model(input_ids=token_stream[:, t : t + 1], past_key_values=cache, use_cache=True)
            assert max(cache.cache_tokens()) <= budget
        assert cache.get_seq_length() == 100
