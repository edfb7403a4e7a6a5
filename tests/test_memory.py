"""The external memory tier (issue 16): offload, summaries, recall, placement, bytes, interfaces."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from test_architectures import build
from streaming_llm import UnsupportedModelError, make_cache, make_policy_config
from streaming_llm.cache import BoundedLayer
from streaming_llm.cli import main
from streaming_llm.compat import cache_kwargs
from streaming_llm.evaluation.runs import RunSpec
from streaming_llm.memory import LayerMemory, MemoryConfig
from streaming_llm.memory.guide import RecallGuide
from streaming_llm.memory.summaries import QuantizedKeys, SummaryBank, key_mass, pack, unpack
from streaming_llm.policies.streaming import SinksAndRecent
from streaming_llm.positions import RotateHalfRoPE
from streaming_llm.sizing import cache_bytes_of, size_for_comparison

HEADS, DIM = 2, 16
ROPE = RotateHalfRoPE(1.0 / (10000 ** (torch.arange(0, DIM, 2).float() / DIM)))
MEMORY = {"block_size": 8, "recall_blocks": 2}
# policies x params, simplest first, each with room for two 8-token blocks to recall
WRAPPED = [
    ("streaming", {"start_size": 4, "recent_size": 28}),
    ("h2o", {"heavy_size": 16, "recent_size": 16}),
    ("tova", {"cache_size": 32}),
    ("snapkv", {"cache_size": 40, "window_size": 8}),
    ("adms", {"start_size": 4, "recent_size": 16, "compressed_budget": 8, "enable_dynamic_sink": False}),
]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def stream(model, cache, ids: torch.Tensor, chunk: int, check=None) -> torch.Tensor:
    logits = []
    with torch.no_grad():
        for begin in range(0, ids.shape[1], chunk):
            logits.append(model(input_ids=ids[:, begin : begin + chunk], **cache_kwargs(model, cache), use_cache=True).logits)
            if check is not None:
                check(cache)
    return torch.cat(logits, dim=1)


def memory_layer(recent: int = 4, **memory) -> BoundedLayer:
    """A model-free layer: a plain window of ``recent`` slots whose evictions go to a LayerMemory."""
    layer = BoundedLayer(SinksAndRecent(0, recent), ROPE)
    layer.memory = LayerMemory(MemoryConfig(**memory), ROPE)
    return layer


def feed(layer: BoundedLayer, free_keys: torch.Tensor, values: torch.Tensor) -> None:
    """Update ``layer`` one token at a time with keys rotated at their absolute positions, as a model gives them."""
    for t in range(free_keys.shape[-2]):
        rotated = ROPE.shift_keys(free_keys[..., t : t + 1, :], torch.tensor([t]))
        layer.update(rotated, values[..., t : t + 1, :])


def test_offload_then_recall_gives_back_the_kv_with_positions_applied_again():
    torch.manual_seed(0)
    keys, values = torch.randn(1, HEADS, 13, DIM), torch.randn(1, HEADS, 13, DIM)
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1, representatives=8, placement="ordered")
    feed(layer, keys, values)  # 13 tokens, 4 kept: 9 evicted, one block of the first 8 sealed (one pending)
    assert len(layer.memory.store) == 1 and layer.memory.store.pending_count(0) == 1
    query = torch.randn(1, 2 * HEADS, 1, DIM)
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))  # the block is recallable from the next update on
    recalled_keys, recalled_values = layer.recall(query, active_slots=5)
    first = layer.seen_tokens - 5  # the oldest active slot's position; the block sits just before it
    expected = ROPE.shift_keys(keys[..., :8, :], torch.arange(first - 8, first))
    torch.testing.assert_close(recalled_keys, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(recalled_values, values[..., :8, :])


def test_beyond_window_places_every_recalled_token_at_one_position():
    torch.manual_seed(1)
    keys, values = torch.randn(1, HEADS, 12, DIM), torch.randn(1, HEADS, 12, DIM)
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1, representatives=8)
    feed(layer, keys, values)
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    recalled_keys, _ = layer.recall(torch.randn(1, 2 * HEADS, 1, DIM), active_slots=5)
    first = layer.seen_tokens - 5
    torch.testing.assert_close(recalled_keys, ROPE.shift_keys(keys[..., :8, :], torch.full((8,), first - 1)),
                               rtol=1e-5, atol=1e-5)


def test_int8_store_recalls_the_rows_within_quantisation_error():
    torch.manual_seed(2)
    keys, values = torch.randn(1, HEADS, 12, DIM), torch.randn(1, HEADS, 12, DIM)
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1, store_dtype="int8", placement="ordered")
    feed(layer, keys, values)
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    _, recalled_values = layer.recall(torch.randn(1, 2 * HEADS, 1, DIM), active_slots=5)
    step = values[..., :8, :].abs().amax(dim=-1, keepdim=True) / 127
    assert bool(((recalled_values - values[..., :8, :]).abs() <= step / 2 + 1e-6).all())
    assert not torch.equal(recalled_values, values[..., :8, :])


@pytest.mark.parametrize("summary", ["representative", "minmax", "quantized"])
def test_a_planted_key_makes_the_store_recall_its_block(summary):
    torch.manual_seed(3)
    tokens, planted = 8 * 12 + 4, 8 * 7 + 3  # 12 blocks; the planted token lies in block 7
    keys, values = torch.randn(1, HEADS, tokens, DIM) * 0.1, torch.randn(1, HEADS, tokens, DIM)
    direction = torch.randn(HEADS, DIM)
    keys[0, :, planted] = 4 * direction
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1, summary=summary)
    feed(layer, keys, values)
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    # a query that looks for the planted key, as it would from where the recalled block is placed
    first = layer.seen_tokens - 5
    free_query = direction.repeat_interleave(2, dim=0)[None, :, None, :]  # (1, H_q, 1, D)
    query = ROPE.shift_keys(free_query, torch.tensor([layer.seen_tokens - 1 - (first - 1)]))
    query = ROPE.shift_keys(query, torch.tensor([first - 1]))
    assert layer.memory.selected_positions() is None  # nothing selected before the first recall
    layer.recall(query, active_slots=5)
    assert layer.memory.lru.gather()[2].eq(planted).any(dim=-1).all()
    # the probe's view of the selection: per KV head, one block (recall_blocks=1) holding the planted token
    selected = layer.memory.selected_positions()
    assert len(selected) == HEADS and all(len(head) == 1 and bool(head[0].eq(planted).any()) for head in selected)


def test_score_adjust_overrides_the_summaries_choice():
    """The probe's oracle hook: adjusted scores pick the blocks, whatever the summaries say."""
    torch.manual_seed(9)
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1)
    feed(layer, torch.randn(1, HEADS, 8 * 6 + 4, DIM), torch.randn(1, HEADS, 8 * 6 + 4, DIM))
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    query = torch.randn(1, 2 * HEADS, 1, DIM)
    layer.recall(query, active_slots=5)
    chosen = {int(head[0][0]) // 8 for head in layer.memory.selected_positions()}
    recallable = layer.memory.store.recallable(layer.seen_tokens)
    forced = next(block for block in range(recallable) if block not in chosen)  # a block no head chose
    layer.memory.score_adjust = lambda scores, store: scores + 1e9 * (torch.arange(scores.shape[-1]) == forced)
    layer.recall(query, active_slots=5)
    assert all(int(head[0][0]) // 8 == forced for head in layer.memory.selected_positions())


def test_score_observer_sees_each_forwards_queries_before_the_selection():
    """The probe's --ranks hook: called with the forward's queries, the oldest active position and
    the recallable blocks, and it changes nothing."""
    torch.manual_seed(9)
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1)
    feed(layer, torch.randn(1, HEADS, 8 * 6 + 4, DIM), torch.randn(1, HEADS, 8 * 6 + 4, DIM))
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    query = torch.randn(1, 2 * HEADS, 1, DIM)
    seen = []
    layer.memory.score_observer = lambda *args: seen.append(args)
    observed = layer.recall(query, active_slots=5)
    layer.memory.score_observer = None
    plain = layer.recall(query, active_slots=5)
    (got_query, first, available, seen_tokens), = seen
    assert got_query is query and first == layer.seen_tokens - 5 and seen_tokens == layer.seen_tokens
    assert available == layer.memory.store.recallable(layer.seen_tokens)
    assert all(torch.equal(a, b) for a, b in zip(observed, plain))


@pytest.mark.parametrize("select_per", ["head", "layer"])
def test_layer_wide_selection_recalls_one_heads_find_in_every_head(select_per):
    torch.manual_seed(10)
    tokens, planted = 8 * 12 + 4, 8 * 5 + 2
    keys, values = torch.randn(1, HEADS, tokens, DIM) * 0.1, torch.randn(1, HEADS, tokens, DIM)
    direction = torch.randn(DIM)
    keys[0, 0, planted] = 4 * direction  # only KV head 0 holds the planted key
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1, select_per=select_per)
    feed(layer, keys, values)
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    free_query = direction.expand(2 * HEADS, DIM)[None, :, None, :].contiguous()  # every query head looks for it
    first = layer.seen_tokens - 5
    layer.recall(ROPE.shift_keys(free_query, torch.tensor([first - 1])), active_slots=5)  # scored at distance 0
    found = [bool(head[0].eq(planted).any()) for head in layer.memory.selected_positions()]
    assert found[0] and all(found[1:]) == (select_per == "layer")


def test_scoring_with_keys_recalls_the_block_holding_the_current_tokens_key():
    """score_with="keys": a new token whose key matches an evicted one recalls that block, wherever it lies."""
    torch.manual_seed(11)
    tokens, planted = 8 * 12 + 4, 8 * 3 + 6
    keys, values = torch.randn(1, HEADS, tokens, DIM) * 0.1, torch.randn(1, HEADS, tokens, DIM)
    word = torch.randn(HEADS, DIM)
    keys[0, :, planted] = 4 * word
    layer = memory_layer(recent=4, block_size=8, recall_blocks=1, score_with="keys")
    feed(layer, keys, values)
    position = layer.seen_tokens
    current = ROPE.shift_keys(4 * word[None, :, None, :], torch.tensor([position]))  # the same word again, rotated
    layer.update(current, torch.randn(1, HEADS, 1, DIM))
    layer.recall(torch.randn(1, 2 * HEADS, 1, DIM), active_slots=5, current_keys=current)  # queries look elsewhere
    assert all(bool(head[0].eq(planted).any()) for head in layer.memory.selected_positions())
    with pytest.raises(ValueError, match="memory_score_with='keys' needs this forward's keys"):
        layer.memory.recall(layer, torch.randn(1, 2 * HEADS, 1, DIM), active_slots=5)


def sink_and_needle_layer(query_centering: str, recall_blocks: int):
    """A layer whose store holds a sink-like key (block 2: along the direction every query of the
    stream shares) and a needle key (block 7: along a direction only the last query adds), each
    query recalled as the stream goes so the layer sees the stream's queries; returns the layer
    and the positions of the sink and the needle."""
    torch.manual_seed(12)
    tokens, sink, needle = 8 * 12 + 4, 8 * 2 + 1, 8 * 7 + 5
    keys, values = torch.randn(1, HEADS, tokens, DIM) * 0.1, torch.randn(1, HEADS, tokens, DIM)
    common, wanted = torch.zeros(DIM), torch.zeros(DIM)
    common[0], wanted[1] = 3.0, 1.0  # orthogonal, and the shared direction is the stronger one
    # stored as the last query will meet them: 5 positions away (the recall slots sit just before
    # the 5 active slots), so that the rotation of the query to that distance lines them up
    distance = torch.tensor([5])
    keys[0, :, sink] = 4 * ROPE.shift_keys(common[None, None, None], distance)[0, 0, 0]
    keys[0, :, needle] = 4 * ROPE.shift_keys(wanted[None, None, None], distance)[0, 0, 0]
    layer = memory_layer(recent=4, block_size=8, recall_blocks=recall_blocks, query_centering=query_centering)

    def query_at(free: torch.Tensor, position: int) -> torch.Tensor:  # (D,) position-free -> (1, H_q, 1, D) rotated
        return ROPE.shift_keys(free.expand(2 * HEADS, DIM)[None, :, None, :].contiguous(), torch.tensor([position]))

    for t in range(tokens):
        layer.update(ROPE.shift_keys(keys[..., t : t + 1, :], torch.tensor([t])), values[..., t : t + 1, :])
        layer.recall(query_at(common + 0.05 * torch.randn(DIM), t), active_slots=5)
    layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
    layer.recall(query_at(common + wanted, layer.seen_tokens - 1), active_slots=5)
    return layer, sink, needle


def recalled(layer, position: int) -> bool:
    """Whether every KV head's current selection holds ``position``."""
    return all(any(bool(block.eq(position).any()) for block in head) for head in layer.memory.selected_positions())


def test_centred_queries_recall_the_needle_that_a_sink_like_key_outbids():
    """query_centering="mean": the plain queries pick the key every query shares; the centred
    ones, the key only the last query looks for; "split" recalls both with two blocks."""
    layer, sink, needle = sink_and_needle_layer("none", recall_blocks=1)
    assert recalled(layer, sink) and not recalled(layer, needle)
    layer, sink, needle = sink_and_needle_layer("mean", recall_blocks=1)
    assert recalled(layer, needle) and not recalled(layer, sink)
    layer, sink, needle = sink_and_needle_layer("split", recall_blocks=2)
    assert recalled(layer, sink) and recalled(layer, needle)
    assert [int(head[0][0]) // 8 for head in layer.memory.selected_positions()] == [2] * HEADS  # plain half first


def test_a_guide_layer_chooses_the_recall_of_the_layers_after_it():
    """memory_guide_layers: a follower whose own queries pick the sink-like block recalls the
    needle's block once the guide (whose centred queries find it) has scored this forward; before
    any guide has scored it recalls by its own scores."""
    guide_layer, _, needle = sink_and_needle_layer("mean", recall_blocks=1)
    follower, sink, _ = sink_and_needle_layer("none", recall_blocks=1)  # the same stream, plain queries
    assert recalled(guide_layer, needle) and recalled(follower, sink) and not recalled(follower, needle)
    guide = RecallGuide(0, 0, followers=[1])
    guide.attach(SimpleNamespace(layers=[guide_layer, follower]))
    assert not guide.needs_previous_forward

    def next_forward(layer):  # one more token, queried as the stream's last query was
        layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
        free = torch.zeros(DIM)
        free[0], free[1] = 3.0, 1.0  # the shared direction plus the needle's
        query = ROPE.shift_keys(free.expand(2 * HEADS, DIM)[None, :, None, :].contiguous(),
                                torch.tensor([layer.seen_tokens - 1]))
        layer.recall(query, active_slots=5)

    next_forward(follower)  # no guide has scored yet: its own choice
    assert recalled(follower, sink)
    next_forward(guide_layer)
    next_forward(follower)
    assert recalled(follower, needle) and not recalled(follower, sink)


def asked_and_crowd_layer(recall_blocks: int, last_query_blocks: int):
    """A layer whose store holds a key only a forward's last query looks for (block 3) and a key
    its three other queries look for (block 8), after one forward of four queries; returns the
    layer and the two positions. The keys lie in RoPE's slowest pair of dimensions, so the few
    positions between the queries do not turn them."""
    torch.manual_seed(13)
    tokens, asked, crowd = 8 * 12 + 4, 8 * 3 + 2, 8 * 8 + 6
    keys, values = torch.randn(1, HEADS, tokens, DIM) * 0.1, torch.randn(1, HEADS, tokens, DIM)
    asked_direction, crowd_direction = torch.zeros(DIM), torch.zeros(DIM)
    asked_direction[DIM // 2 - 1], crowd_direction[DIM // 2 - 2] = 1.0, 1.0
    keys[0, :, asked], keys[0, :, crowd] = 4 * asked_direction, 4 * crowd_direction
    layer = memory_layer(recent=4, block_size=8, recall_blocks=recall_blocks, score_queries=4,
                         last_query_blocks=last_query_blocks)
    feed(layer, keys, values)
    layer.update(torch.randn(1, HEADS, 4, DIM), torch.randn(1, HEADS, 4, DIM))
    free = torch.stack([crowd_direction] * 3 + [asked_direction]) * 8  # (4, D): the last query asks
    positions = torch.arange(layer.seen_tokens - 4, layer.seen_tokens)
    query = ROPE.shift_keys(free[None, None].expand(1, 2 * HEADS, 4, DIM).contiguous(), positions)
    layer.recall(query, active_slots=8)
    return layer, asked, crowd


def test_last_query_blocks_recall_what_the_last_query_asks_for_beside_what_the_chunk_wants():
    layer, asked, crowd = asked_and_crowd_layer(recall_blocks=1, last_query_blocks=0)
    assert recalled(layer, crowd) and not recalled(layer, asked)  # three queries outvote the last
    layer, asked, crowd = asked_and_crowd_layer(recall_blocks=1, last_query_blocks=1)
    assert recalled(layer, asked) and not recalled(layer, crowd)
    layer, asked, crowd = asked_and_crowd_layer(recall_blocks=2, last_query_blocks=1)
    assert recalled(layer, asked) and recalled(layer, crowd)
    assert [int(head[0][0]) // 8 for head in layer.memory.selected_positions()] == [3] * HEADS  # the last query's first


def test_guided_last_query_blocks_follow_the_guides_last_query_sum(model, token_stream):
    memory = {**MEMORY, "guide_layers": "0-0", "last_query_blocks": 1}
    with make_cache(model, "streaming", start_size=4, recent_size=28, memory=memory) as cache:
        logits = stream(model, cache, token_stream[:, :150], chunk=7)
        guide, follower = (layer.memory for layer in cache.layers)
        sums = guide.guide.published
        assert set(sums) == {"main", "last"} and torch.isfinite(logits).all()
        first_choice = int(sums["last"].argmax())
        assert all(int(row[0]) == first_choice for row in follower._selection)  # the last-query pick leads


def test_guide_layers_run_on_a_model_and_followers_recall_alike_in_every_head(model, token_stream):
    memory = {**MEMORY, "guide_layers": "0-0"}
    with make_cache(model, "streaming", start_size=4, recent_size=28, memory=memory) as cache:
        logits = stream(model, cache, token_stream[:, :150], chunk=7)
        guide, follower = (layer.memory for layer in cache.layers)
        assert guide.guide is follower.guide and guide.guide.followers == {1} and torch.isfinite(logits).all()
        published = guide.guide.published["main"]
        expected = published.topk(MEMORY["recall_blocks"]).indices.sort().values
        assert all(torch.equal(row.sort().values, expected) for row in follower._selection)
    with make_cache(model, "streaming", start_size=4, recent_size=28, memory=MEMORY) as cache:
        assert all(layer.memory.guide is None for layer in cache.layers)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantized_summary_keeps_every_key_within_half_a_step(bits):
    torch.manual_seed(6)
    keys = torch.randn(HEADS, 8, DIM) * 3
    summarizer = QuantizedKeys(bits)
    codes, scales = summarizer.summarize(keys, None)
    assert codes.dtype == torch.uint8 and codes.shape == (HEADS, 8, DIM * bits // 8)
    assert scales.dtype == torch.float16 and scales.shape == (HEADS, 8)
    step = keys.abs().amax(dim=-1, keepdim=True) / (2 ** (bits - 1) - 1)
    error = (summarizer.dequantize(codes, scales) - keys).abs()
    assert bool((error <= step / 2 + step * 2e-3).all())  # fp16 scales add a relative 1e-3
    assert bool((error > 0).any())


@pytest.mark.parametrize("block_score", ["max", "sum"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantized_score_equals_the_mass_of_the_dequantised_keys(bits, block_score):
    """The score works on the packed codes; it must rank as the dequantised keys do."""
    torch.manual_seed(7)
    summarizer = QuantizedKeys(bits, block_score)
    blocks = [summarizer.summarize(torch.randn(HEADS, 8, DIM) * 2, None) for _ in range(5)]
    codes, scales = (torch.stack(part) for part in zip(*blocks))  # (N, H, bs, ...)
    queries = torch.randn(HEADS, 6, DIM)
    expected = key_mass(summarizer.dequantize(codes, scales), queries, block_score)
    assert torch.allclose(summarizer.score((codes, scales), queries), expected, atol=1e-5)


def test_max_query_reduce_lets_one_query_pick_its_block_against_many():
    # block 0: one query looks for it alone; block 1: mildly preferred by the three others
    keys = torch.zeros(2, 1, 1, DIM)
    keys[0, 0, 0, 0], keys[1, 0, 0, 1] = 1.0, 1.0
    queries = torch.zeros(1, 4, DIM)
    queries[0, 0, 0], queries[0, 1:, 1] = 8 * DIM**0.5, 2 * DIM**0.5
    assert key_mass(keys, queries, query_reduce="sum").argmax() == 1
    assert key_mass(keys, queries, query_reduce="max").argmax() == 0


def test_summed_block_score_is_the_blocks_share_of_attention_over_every_stored_key():
    torch.manual_seed(8)
    keys, queries = torch.randn(5, HEADS, 8, DIM) * 2, torch.randn(HEADS, 3, DIM)  # 5 blocks of 8 keys
    logits = torch.einsum("hqd,nhrd->hqnr", queries, keys) * DIM**-0.5
    share = torch.softmax(logits.flatten(2), dim=-1).view(HEADS, 3, 5, 8).sum(dim=(1, 3))  # (H, N)
    assert torch.allclose(key_mass(keys, queries, "sum"), share, atol=1e-5)
    # the best key alone ranks differently: one block with a single strong key, one with many mild ones
    keys = torch.zeros(2, 1, 8, DIM)
    keys[0, 0, 0, 0], keys[1, 0, :, 0] = 3.0, 2.6
    query = torch.zeros(1, 1, DIM)
    query[0, 0, 0] = DIM**0.5
    assert key_mass(keys, query, "max").argmax() == 0 and key_mass(keys, query, "sum").argmax() == 1


def test_pack_unpack_round_trip():
    for bits in (2, 4, 8):
        codes = torch.randint(0, 2**bits, (3, 5, 16), dtype=torch.uint8)
        assert torch.equal(unpack(pack(codes, bits), bits), codes)


def test_summary_bank_grows_drops_and_counts_its_buffers():
    bank = SummaryBank()
    for index in range(9):
        bank.append((torch.full((HEADS, 2), float(index)), torch.full((HEADS,), index, dtype=torch.uint8)))
    assert len(bank) == 9 and bank.parts[0].shape[0] == 16  # 4 -> 8 -> 16
    assert bank.nbytes() == 16 * HEADS * 2 * 4 + 16 * HEADS
    bank.drop(3)
    first, second = bank.first(len(bank))
    assert first[:, 0, 0].tolist() == [0, 1, 2, 4, 5, 6, 7, 8] and second[:, 0].tolist() == [0, 1, 2, 4, 5, 6, 7, 8]


def test_recall_interval_reuses_the_selection():
    torch.manual_seed(4)
    layer = memory_layer(recent=4, block_size=4, recall_blocks=1, recall_interval=3)
    feed(layer, torch.randn(1, HEADS, 24, DIM), torch.randn(1, HEADS, 24, DIM))
    for _ in range(6):
        layer.update(torch.randn(1, HEADS, 1, DIM), torch.randn(1, HEADS, 1, DIM))
        layer.recall(torch.randn(1, 2 * HEADS, 1, DIM), active_slots=5)
    counters = layer.memory.counters
    assert counters["recall_forwards"] == 6 and counters["recalled_blocks"] == 2 * HEADS  # 2 selections of 1 block per head


def test_passive_budget_drops_the_least_recalled_block():
    torch.manual_seed(5)
    layer = memory_layer(recent=4, block_size=4, recall_blocks=1, passive_blocks=3)
    feed(layer, torch.randn(1, HEADS, 40, DIM), torch.randn(1, HEADS, 40, DIM))
    assert len(layer.memory.store) == 3 and layer.memory.counters["dropped_blocks"] == 6
    assert len(layer.memory.summaries) == 3


@pytest.mark.parametrize("policy,params", WRAPPED, ids=[p for p, _ in WRAPPED])
def test_recall_blocks_zero_gives_the_wrapped_policys_logits(model, token_stream, policy, params):
    ids = token_stream[:, :160]
    with make_cache(model, policy, **params) as plain:
        expected = stream(model, plain, ids, chunk=16)
    with make_cache(model, policy, memory={"block_size": 8, "recall_blocks": 0}, **params) as cache:
        got = stream(model, cache, ids, chunk=16)
        assert cache.passive_bytes() > 0  # it offloaded, it just recalled nothing
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy,params", WRAPPED, ids=[p for p, _ in WRAPPED])
def test_active_slots_never_exceed_the_budget(model, token_stream, policy, params):
    config = make_policy_config(policy + "+memory", **params, **{f"memory_{k}": v for k, v in MEMORY.items()})
    target = cache_bytes_of(config, model)

    def check(cache):
        for layer in cache.layers:
            assert layer.num_slots <= layer.policy.max_slots()
            recalled = 0 if layer.memory.lru.keys is None else layer.memory.lru.keys.shape[1] * layer.memory.lru.keys.shape[2]
            assert recalled <= config.memory.recall_slots
        assert cache.cache_bytes() <= target

    with make_cache(model, policy, memory=MEMORY, **params) as cache:
        stream(model, cache, token_stream[:, :200], chunk=8, check=check)
        assert cache.policy_stats()["memory_recalled_blocks"] > 0


def test_passive_bytes_grow_by_exactly_the_evicted_slots(model, token_stream):
    row = HEADS * (2 * 16 * 4 + 8)  # tiny llama: 2 KV heads of 16 dims in fp32, plus an int64 position each

    def check(cache):
        for layer in cache.layers:
            assert layer.memory.store.nbytes() == (layer.seen_tokens - layer.num_slots) * row

    with make_cache(model, "streaming", start_size=4, recent_size=28, memory=MEMORY) as cache:
        stream(model, cache, token_stream[:, :150], chunk=7, check=check)
        assert cache.passive_bytes() >= sum(layer.memory.store.nbytes() for layer in cache.layers)


@pytest.mark.parametrize("policy,params", WRAPPED[:2], ids=[p for p, _ in WRAPPED[:2]])
def test_generate_gives_the_manual_loops_tokens(model, token_stream, policy, params):
    prompt, new = token_stream[:, :60], 40
    with make_cache(model, policy, memory=MEMORY, **params) as cache:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **cache_kwargs(model, cache),
                             max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        assert cache.policy_stats()["memory_recalled_blocks"] > 0
    manual, step = [], prompt
    with make_cache(model, policy, memory=MEMORY, **params) as cache, torch.no_grad():
        for _ in range(new):
            step = model(input_ids=step, **cache_kwargs(model, cache), use_cache=True).logits[0, -1].argmax().view(1, 1)
            manual.append(step.item())
    assert out[0, prompt.shape[1] :].tolist() == manual


def test_equal_memory_counts_the_recall_slots(model):
    streaming = make_policy_config("streaming", start_size=4, recent_size=60)
    target = cache_bytes_of(streaming, model)
    sized = size_for_comparison(RunSpec.parse("streaming+memory:memory_block_size=8,memory_recall_blocks=2").config(),
                                model, target)
    assert (sized.start_size, sized.recent_size) == (4, 44)  # 64 slots: 16 recalled + 4 sinks + 44 recent
    assert cache_bytes_of(sized, model) == target
    assert sized.to_dict()["memory_recall_blocks"] == 2
    assert pickle.loads(pickle.dumps(sized)) == sized


@pytest.mark.parametrize("memory,match", [
    ({"recall_blocks": 5, "passive_blocks": 4}, "memory_recall_blocks=5 is more than the passive store holds"),
    ({"block_size": 64}, "memory_block_size=64 is larger than the policy's budget of 32 slots"),
    ({"block_size": 0}, "memory_block_size must be an integer >= 1"),
    ({"summary": "mean"}, "memory_summary must be one of 'representative', 'minmax', 'quantized'"),
    ({"summary_bits": 3}, "memory_summary_bits must be one of 2, 4, 8"),
    ({"block_score": "mean"}, "memory_block_score must be one of 'max', 'sum'"),
    ({"select_per": "token"}, "memory_select_per must be one of 'head', 'layer'"),
    ({"query_reduce": "mean"}, "memory_query_reduce must be one of 'sum', 'max'"),
    ({"score_with": "values"}, "memory_score_with must be one of 'queries', 'keys'"),
    ({"query_centering": "median"}, "memory_query_centering must be one of 'none', 'mean', 'split'"),
    ({"query_centering": "mean", "score_with": "keys"}, "memory_query_centering centres the scoring queries"),
    ({"summary": "minmax", "block_score": "sum"}, "memory_block_score='sum' needs a summary"),
    ({"placement": "anywhere"}, "memory_placement must be one of"),
    ({"store_dtype": "int4"}, "memory_store_dtype must be one of"),
    ({"lru_blocks": 1, "recall_blocks": 2}, "memory_lru_blocks must be an integer >= 2"),
    ({"blocks": 3}, "unknown memory parameter"),
    ({"guide_layers": "13"}, "memory_guide_layers must be 'FIRST-LAST'"),
    ({"guide_layers": "1-0"}, "memory_guide_layers must be 'FIRST-LAST'"),
    ({"guide_layers": "0-0", "query_centering": "split"}, "memory_query_centering='split' scores twice"),
    ({"last_query_blocks": 5}, "memory_last_query_blocks must be <= memory_recall_blocks .4.; got 5"),
    ({"last_query_blocks": 1, "score_with": "keys"}, "memory_last_query_blocks splits the recall"),
    ({"last_query_blocks": -1}, "memory_last_query_blocks must be an integer >= 0"),
    ({"guide_layers": "0-1", "block_size": 8}, "must end before the model's last layer with memory .layer 1."),
])
def test_bad_memory_parameters_are_named(model, memory, match):
    with pytest.raises(ValueError, match=match):
        make_cache(model, "streaming", start_size=4, recent_size=28, memory=memory)


def test_guide_layers_need_a_policy_that_evicts_alike_in_every_layer():
    with pytest.raises(ValueError, match="'h2o' evicts by per-layer scores; allowed with: sliding_window, streaming"):
        make_policy_config("h2o+memory", memory_guide_layers="0-0")
    make_policy_config("sliding_window+memory", window_size=64, memory_guide_layers="0-0")


def test_memory_needs_a_bounded_policy():
    with pytest.raises(ValueError, match="memory wraps a bounded policy"):
        make_policy_config("full+memory")
    with pytest.raises(ValueError, match="already has memory"):
        make_policy_config("streaming+memory+memory")


@pytest.mark.parametrize("name", ["mpt", "gpt2"])
def test_families_that_cannot_reposition_are_refused(name):
    with pytest.raises(UnsupportedModelError, match="needs rotary position embeddings"):
        make_cache(build(name), "streaming", start_size=4, recent_size=28, memory=MEMORY)


def test_tasks_command_takes_memory_policies_and_records_their_counters(tiny_model_dir, tmp_path):
    out = tmp_path / "tasks"
    streaming = make_policy_config("streaming", start_size=4, recent_size=60)
    argv = ["tasks", "--model", str(tiny_model_dir), "--policies", "streaming:start_size=4,recent_size=60",
            "streaming+memory:memory_block_size=16,memory_recall_blocks=2,memory_summary=minmax",
            "--tasks", "passkey", "--lengths", "400", "--depths", "0.5", "--samples", "1", "--chunk-size", "64",
            "--max-new-tokens", "4", "--output-dir", str(out), "--quiet"]
    argv[argv.index("--tasks"):argv.index("--tasks")] = [
        "--cache-bytes", str(cache_bytes_of(streaming, AutoModelForCausalLM.from_pretrained(tiny_model_dir)))]
    assert main(argv) == 0
    records = {path.name.split("-passkey")[0]: json.loads(path.read_text()) for path in (out / "records").glob("*.json")}
    memory = records["streaming_memory_memory_block_size=16_memory_recall_blocks=2_memory_summary=minmax"]
    assert memory["policy"] == "streaming+memory" and memory["params"]["memory_summary"] == "minmax"
    assert memory["params"]["recent_size"] == 28  # 64 slots at equal bytes: 32 recalled + 4 sinks + 28 recent
    assert memory["policy_stats"]["memory_recalled_blocks"] > 0 and memory["passive_bytes"] > 0
    assert memory["cache_bytes_max"] <= records["streaming_start_size=4_recent_size=60"]["cache_bytes_max"]


def test_sweep_grids_take_memory_policies(tmp_path):
    from streaming_llm.sweep import load_grid

    path = tmp_path / "g.toml"
    path.write_text("""
[scenarios.s]
model = "m"
text = "builtin:pioneer-days"
tokens = 64

[profiles.p]
equal_memory_to = "streaming"
policies = ["streaming:start_size=4,recent_size=60", "streaming+memory:memory_block_size=8", { policy = "h2o+memory", memory_recall_blocks = 2, memory_store_dtype = "int8" }]
""")
    specs = load_grid(str(path)).profiles["p"].specs
    configs = [spec.config() for spec in specs]
    assert [c.name for c in configs] == ["streaming", "streaming+memory", "h2o+memory"]
    assert configs[1].memory.block_size == 8 and configs[2].memory == MemoryConfig(recall_blocks=2, store_dtype="int8")
