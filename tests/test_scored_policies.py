"""Attention-scored policies against slow, literal reference implementations on random attention,
plus their budgets on a tiny model."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from streaming_llm import make_cache, make_policy_config
from streaming_llm.policies.base import SlotView
from streaming_llm.compat import cache_kwargs

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
        model(input_ids=token_stream[:, :40], **cache_kwargs(model, cache), use_cache=True)  # prefill past the budget
        assert max(cache.cache_tokens()) <= budget
        for t in range(40, 100):
            model(input_ids=token_stream[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True)
            assert max(cache.cache_tokens()) <= budget
        assert cache.get_seq_length() == 100


# --- SnapKV (and RocketKV's stage 1) ----------------------------------------------------------

def _pool(values, kernel, mode):
    """Literal 1-D pooling, stride 1, zero padding of kernel // 2 (counted in averages)."""
    pad = kernel // 2
    padded = [0.0] * pad + list(values) + [0.0] * pad
    if mode == "maxpool":
        padded = [float("-inf")] * pad + list(values) + [float("-inf")] * pad
    windows = [padded[i : i + kernel] for i in range(len(values))]
    return [max(w) if mode == "maxpool" else sum(w) / kernel for w in windows]


def reference_snapkv(chunks, cache_size, window, kernel, mode, interval, seed=0):
    generator = torch.Generator().manual_seed(seed)
    kept = [[] for _ in range(KV_HEADS)]
    rows = [[] for _ in range(KV_HEADS)]  # per head: attention rows of the latest queries, {position: p}
    seen = 0
    for q in chunks:
        for h in range(KV_HEADS):
            kept[h] += list(range(seen, seen + q))
        seen += q
        n = len(kept[0])
        probs = torch.softmax(torch.randn(1, KV_HEADS * GROUP, q, n, generator=generator), dim=-1)
        for h in range(KV_HEADS):
            for i in range(q):
                row = probs[0, h * GROUP : (h + 1) * GROUP, i].mean(0)
                rows[h].append({p: row[j].item() for j, p in enumerate(kept[h])})
            rows[h] = rows[h][-window:]
            if n > cache_size:
                older = kept[h][: n - window]
                votes = _pool([sum(r.get(p, 0.0) for r in rows[h]) for p in older], kernel, mode)
                best = sorted(range(len(older)), key=lambda j: -votes[j])[: cache_size - interval - window]
                kept[h] = sorted(older[j] for j in best) + kept[h][n - window :]
        yield [list(row) for row in kept]


@pytest.mark.parametrize("kernel", [1, 3, 4])
@pytest.mark.parametrize("chunks", [[1] * 70, [30, 1, 1, 1, 9, 1, 1, 1, 1, 13] * 3])
def test_snapkv_matches_reference(kernel, chunks):
    # avg pooling of random votes has no ties, so the kept slots must match exactly, step by step
    args = dict(cache_size=20, window_size=4, kernel_size=kernel, pooling="avgpool", reselect_interval=3)
    policy = make_policy_config("snapkv", **args).build_layer_policy(0, 1)
    expected = reference_snapkv(chunks, 20, 4, kernel, "avgpool", 3)
    for (_, got), want in zip(drive(policy, chunks), expected):
        assert got == want
        assert len(got[0]) <= 20


def test_snapkv_maxpool_keeps_the_window_and_the_top_pooled_votes():
    # max pooling makes neighbours tie, so compare the votes kept, not which of two equals won
    policy = make_policy_config("snapkv", cache_size=20, window_size=4, kernel_size=5, pooling="maxpool",
                                reselect_interval=3).build_layer_policy(0, 1)
    (probs, got), = drive(policy, [50])
    for h in range(KV_HEADS):
        rows = probs[0, h * GROUP : (h + 1) * GROUP, -4:, :46].mean(0)  # the window's votes for older slots
        votes = _pool(rows.sum(0).tolist(), 5, "maxpool")
        assert got[h][-4:] == [46, 47, 48, 49]
        kept_votes = sorted(votes[p] for p in got[h][:-4])
        assert kept_votes == pytest.approx(sorted(votes)[-13:])


# --- RocketKV's stage 2 -----------------------------------------------------------------------

def test_rocketkv_estimate_is_exact_with_one_slot_pages_and_all_channels():
    from streaming_llm.policies.rocketkv import approximate_scores

    torch.manual_seed(0)
    query, keys = torch.randn(1, KV_HEADS * GROUP, 1, 16), torch.randn(1, KV_HEADS, 23, 16)
    exact = torch.softmax(query @ keys.repeat_interleave(GROUP, 1).transpose(-1, -2) / 4.0, dim=-1)
    exact = exact[0, :, 0].reshape(KV_HEADS, GROUP, 23).mean(1)
    assert torch.allclose(approximate_scores(query, keys, page_size=1, topr=16), exact, atol=1e-6)


def test_rocketkv_estimate_matches_a_literal_loop():
    from streaming_llm.policies.rocketkv import approximate_scores

    torch.manual_seed(1)
    page, topr, dim, n = 4, 5, 8, 18
    query, keys = torch.randn(1, KV_HEADS * GROUP, 1, dim), torch.randn(1, KV_HEADS, n, dim)
    got = approximate_scores(query, keys, page, topr)
    for h in range(KV_HEADS):
        q = query[0, h * GROUP : (h + 1) * GROUP, 0]  # (G, D)
        sign = torch.sign(q.sum(0))
        channels = q.abs().mean(0).topk(topr).indices.tolist()
        pages = [list(range(s, min(s + page, n))) for s in range(0, n, page)]
        per_head = []
        for g in range(GROUP):
            scale = (dim * sum(abs(q[g, c].item()) for c in channels) / q[g].abs().sum().item()) ** 0.5
            logits = torch.tensor([
                sum(q[g, c].item() * sign[c].item() * max(keys[0, h, t, c].item() * sign[c].item() for t in members)
                    for c in channels) / scale
                for members in pages
            ])
            per_head.append(torch.softmax(logits, 0))
        page_scores = torch.stack(per_head).mean(0)
        expected = torch.tensor([page_scores[t // page].item() for t in range(n)])
        assert torch.allclose(got[h], expected, atol=1e-5)


def test_rocketkv_reads_topk_keys_and_attends_exactly_to_them(token_stream):
    model = tiny_model("llama")
    args = dict(storage_size=48, topk=10, window_size=4, kernel_size=7, reselect_interval=4)
    with make_cache(model, "rocketkv", **args) as cache, torch.no_grad():
        for t in range(80):
            model(input_ids=token_stream[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True)
            assert max(cache.cache_tokens()) <= 48
        stats = cache.policy_stats()
    sparse_steps = stats["sparse_steps"]
    assert sparse_steps == model.config.num_hidden_layers * (80 - 10)  # dense while n <= topk
    assert stats["keys_read"] == 10 * sparse_steps

    # with topk >= every slot, stage 2 reads everything: logits equal dense SnapKV-style storage
    dense = dict(args, topk=10_000)
    with make_cache(model, "rocketkv", **dense) as a, torch.no_grad():
        first = torch.cat([model(input_ids=token_stream[:, t : t + 1], **cache_kwargs(model, a), use_cache=True).logits
                           for t in range(60)])
    snap = dict(cache_size=48, window_size=4, kernel_size=7, pooling="maxpool", reselect_interval=4)
    with make_cache(model, "snapkv", **snap) as b, torch.no_grad():
        second = torch.cat([model(input_ids=token_stream[:, t : t + 1], **cache_kwargs(model, b), use_cache=True).logits
                            for t in range(60)])
    assert torch.allclose(first, second, atol=1e-5)


# --- DynamicKV --------------------------------------------------------------------------------

def test_budget_allocation_is_proportional_bounded_and_exact():
    from streaming_llm.policies.dynamickv import allocate_budgets

    assert allocate_budgets([1, 1, 1, 1], 100, 5, 60) == [25, 25, 25, 25]
    assert allocate_budgets([3, 1, 0, 0], 100, 5, 60) == [60, 30, 5, 5]  # capped, rest shared, floors held
    budgets = allocate_budgets([7, 2, 9, 1, 4], 333, 10, 120)
    assert sum(budgets) == 333 and all(10 <= b <= 120 for b in budgets)
    assert budgets[2] >= budgets[0] >= budgets[4] >= budgets[1] >= budgets[3]
    with pytest.raises(ValueError):
        allocate_budgets([1, 1], 100, 60, 80)


def test_dynamickv_moves_budget_to_layers_with_the_strongest_votes():
    from streaming_llm.policies.dynamickv import AdaptiveLayer, LayerBudgetAllocator

    allocator = LayerBudgetAllocator(num_layers=3, cache_size=24, window_size=4, ratio_max=2.0, reselect_interval=2)
    trims = {}

    class FakeLayer:
        end_step = AdaptiveLayer.end_step  # the trim each layer does when the step ends

        def __init__(self, idx, level):
            self.layer_idx, self.allocator, self.reselect_interval = idx, allocator, 2
            self.scores = torch.full((2, 100 if idx == 0 else 40), level)
            allocator.policies.append(self)

        def candidate_scores(self):
            return self.scores

        def select_top(self, scores, keep):
            trims[self.layer_idx] = keep
            return torch.arange(keep)

    layers = [FakeLayer(idx, level) for idx, level in enumerate([0.9, 0.1, 0.1])]
    allocator.reallocate(num_kv_heads=2)
    assert sum(allocator.budgets) == 3 * 24  # total fixed
    # all 120 top votes are layer 0's: it gets ratio_max * base = 40 (+ window), the rest is shared
    assert allocator.budgets == [4 + 40, 4 + 10, 4 + 10]
    for layer in layers:
        layer.end_step()
    assert trims == {i: b - 2 for i, b in enumerate(allocator.budgets)}


def test_dynamickv_total_budget_holds_on_a_model(token_stream):
    model = tiny_model("llama", num_hidden_layers=4)
    with make_cache(model, "dynamickv", cache_size=20, window_size=4, reselect_interval=4, ratio_max=3.0) as cache, \
            torch.no_grad():
        model(input_ids=token_stream[:, :50], **cache_kwargs(model, cache), use_cache=True)
        for t in range(50, 150):
            assert sum(cache.cache_tokens()) <= 4 * 20
            model(input_ids=token_stream[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True)
        allocator = cache.layers[0].policy.allocator
        assert allocator.reallocations > 5 and sum(allocator.budgets) == 4 * 20
