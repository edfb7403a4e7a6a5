"""ATSKV (seed 003): features, the trained predictor, the threshold controller, the policy."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from streaming_llm import make_cache
from streaming_llm.cli import main
from streaming_llm.compat import cache_kwargs
from streaming_llm.policies import make_policy_config
from streaming_llm.policies.atskv import RelevancePredictor, ThresholdController
from streaming_llm.policies.atskv.features import (DYNAMIC_FEATURES, FEATURE_NAMES, HIDDEN_DIMS, NUM_FEATURES,
                                                   STATIC_FEATURES, feature_matrix, recent_update)
from streaming_llm.policies.atskv.predictor import model_fingerprint, resolve_predictor, shipped_predictors
from streaming_llm.policies.atskv.train import _recent_at, auc, fit_logistic


def _run(model, cache, ids, chunk):
    with torch.no_grad():
        for start in range(0, ids.shape[1], chunk):
            model(input_ids=ids[:, start : start + chunk], **cache_kwargs(model, cache), use_cache=True)


def _predictor_with_projection(model, seed=0) -> RelevancePredictor:
    """The prior's weights plus a projection and a token-flag table (id % 2, id % 3 == 0, ...)."""
    predictor = RelevancePredictor.prior(model.config.num_hidden_layers)
    predictor.projection = torch.randn(model.config.hidden_size, HIDDEN_DIMS, generator=torch.Generator().manual_seed(seed))
    ids = torch.arange(model.config.vocab_size)
    predictor.flags = torch.stack([ids % 2 == 0, ids % 3 == 0, ids % 5 == 0, ids % 7 == 0], dim=1).to(torch.uint8)
    return predictor


# -- features ------------------------------------------------------------------------------
def test_features_follow_the_slots_and_read_the_layer_input(token_stream, monkeypatch):
    """On a tiny model the per-slot state stays aligned with the kept slots: the projected hidden
    state is the attention module's own input for that token, the flags those of its token id.
    Recording (as train-relevance does) keeps those features; running keeps only their share of
    the logit, which selects the same slots."""
    model = tiny_model("llama")
    predictor = _predictor_with_projection(model)
    predictor.weight[:] = 0
    predictor.weight[:, FEATURE_NAMES.index("key_norm")] = 1.0  # differs by KV head on a random model
    for name in ("h0", "h3", "digit", "word_start"):  # static columns, so folding them matters
        predictor.weight[:, FEATURE_NAMES.index(name)] = 0.02
    monkeypatch.setattr("streaming_llm.policies.atskv.cache.resolve_predictor", lambda source, m: predictor)
    seen: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    handles = [layer.self_attn.register_forward_pre_hook(
        lambda mod, args, kwargs, i=i: seen[i].append(kwargs["hidden_states"][0].detach()), with_kwargs=True)
        for i, layer in enumerate(model.model.layers)]
    ids = token_stream[:, :60]
    try:
        recorded = []
        with make_cache(model, "atskv", cache_size=20, start_size=2, recent_size=4) as cache:
            for layer in cache.layers:
                layer.policy.recorder = lambda *record: None
            hooks_while_open = len(model._forward_pre_hooks)
            _run(model, cache, ids, 6)
            for index, layer in enumerate(cache.layers):
                policy, positions, heads = layer.policy, layer.positions, layer.positions.shape[0]
                assert policy.accumulated.shape == policy.recent.shape == (heads, layer.num_slots)
                assert policy.static.shape == (heads, layer.num_slots, len(STATIC_FEATURES))
                inputs = torch.cat(seen[index])  # (60, hidden): every token's input to attention
                hidden, flags = policy.static[..., :HIDDEN_DIMS], policy.static[..., HIDDEN_DIMS:]
                assert torch.allclose(hidden, inputs[positions] @ predictor.projection, atol=1e-5)
                assert torch.equal(flags, predictor.flags[ids[0, positions]].float())
                assert (policy.accumulated > 0).all() and (policy.recent > 0).all()
                assert (positions[:, :2] == torch.tensor([0, 1])).all()
                assert (positions[:, -4:] == torch.arange(56, 60)).all()
                recorded.append((positions.clone(), policy.static.clone()))
            assert any(not torch.equal(layer.positions[0], layer.positions[1]) for layer in cache.layers)  # per head
        assert len(model._forward_pre_hooks) < hooks_while_open  # disable() removed the tap's hook
        assert all(len(layer.self_attn._forward_pre_hooks) == 1 for layer in model.model.layers)  # only ours
        with make_cache(model, "atskv", cache_size=20, start_size=2, recent_size=4) as cache:
            _run(model, cache, ids, 6)
            for index, (layer, (positions, static)) in enumerate(zip(cache.layers, recorded)):
                assert torch.equal(layer.positions, positions)
                assert layer.policy.static.shape == positions.shape
                assert torch.allclose(layer.policy.static, predictor.static_logits(index, static), atol=1e-5)
    finally:
        for handle in handles:
            handle.remove()


def test_folded_relevance_equals_the_whole_row():
    predictor = RelevancePredictor(torch.randn(2, NUM_FEATURES), torch.randn(2), torch.randn(2, NUM_FEATURES),
                                   torch.rand(2, NUM_FEATURES) + 0.5)
    features = torch.randn(3, 7, NUM_FEATURES)
    static = features[..., [FEATURE_NAMES.index(name) for name in STATIC_FEATURES]]
    dynamic = features[..., [FEATURE_NAMES.index(name) for name in DYNAMIC_FEATURES]]
    assert len(STATIC_FEATURES) + len(DYNAMIC_FEATURES) == NUM_FEATURES
    folded = predictor.relevance_folded(1, dynamic, predictor.static_logits(1, static))
    assert torch.allclose(folded, predictor.relevance(1, features), atol=1e-6)


def test_feature_columns():
    n = 5
    x = feature_matrix(torch.ones(n, HIDDEN_DIMS), torch.full((n,), 2.0), torch.full((n,), 0.1), torch.full((n,), 0.2),
                       torch.arange(n), torch.arange(n), 10, torch.full((n,), 3.0), torch.full((n,), 4.0),
                       torch.tensor([[1, 0, 0, 1]] * n, dtype=torch.uint8))
    assert x.shape == (n, NUM_FEATURES) == (n, len(FEATURE_NAMES))
    col = {name: x[:, i] for i, name in enumerate(FEATURE_NAMES)}
    assert torch.allclose(col["attention_accumulated"], torch.log(torch.tensor(2.0)), atol=1e-5)
    assert torch.allclose(col["attention_recent"], torch.log(torch.tensor(1.0)), atol=1e-4)  # 0.1 x 10 visible
    assert torch.allclose(col["attention_last"], torch.log(torch.tensor(2.0)), atol=1e-4)
    assert torch.allclose(col["age"], torch.log1p(torch.arange(n).float()))
    assert torch.allclose(col["cache_position"], torch.arange(n) / 10)
    assert col["key_norm"].eq(3).all() and col["value_norm"].eq(4).all()
    assert col["punctuation"].eq(1).all() and col["newline"].eq(0).all() and col["word_start"].eq(1).all()


def test_recent_attention_is_the_same_step_by_step_chunked_and_in_training():
    """The policy folds chunks (features.recent_update); training uses the closed form: they agree."""
    probs = torch.softmax(torch.randn(40, 40), dim=-1).tril()
    by_token = torch.zeros(40)
    for t in range(40):
        by_token = recent_update(by_token, probs[t : t + 1])
    chunked = torch.zeros(40)
    for t in range(0, 40, 7):
        chunked = recent_update(chunked, probs[t : t + 7])
    closed = _recent_at(probs, torch.tensor([39]))[0]
    assert torch.allclose(by_token, chunked, atol=1e-6) and torch.allclose(by_token, closed, atol=1e-6)


# -- the predictor ----------------------------------------------------------------------------
def test_predictor_learns_a_stream_of_known_relevance():
    """A synthetic stream where a token is relevant iff it is a newline or received much recent
    attention (plus noise): the training loss falls and held-out AUC exceeds 0.9."""
    generator = torch.Generator().manual_seed(0)
    n = 6000
    x = torch.randn(n, NUM_FEATURES, generator=generator)
    x[:, FEATURE_NAMES.index("newline")] = (torch.rand(n, generator=generator) < 0.1).float()
    truth = 2.5 * x[:, FEATURE_NAMES.index("attention_recent")] + 4 * x[:, FEATURE_NAMES.index("newline")] \
        - 1.5 * x[:, FEATURE_NAMES.index("age")] + 0.5 * torch.randn(n, generator=generator)
    y = (truth > 0.5).float()
    w, b, mean, std, losses = fit_logistic(x[:4000], y[:4000])
    assert losses[-1] < losses[0] - 0.3
    held_out = ((x[4000:] - mean) / std) @ w + b
    assert auc(held_out, y[4000:]) > 0.9
    assert auc(torch.randn(2000, generator=generator), y[4000:]) < 0.6  # the metric itself can fail


def test_auc_counts_ties_as_half():
    assert auc(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])) == 0.5


def test_predictor_files_round_trip(tmp_path, tiny_llama):
    predictor = _predictor_with_projection(tiny_llama)
    predictor.manifest = {"features": list(FEATURE_NAMES), "model_fingerprint": model_fingerprint(tiny_llama)}
    predictor.save(tmp_path / "p")
    loaded = resolve_predictor(str(tmp_path / "p.pt"), tiny_llama)
    assert torch.equal(loaded.flags, predictor.flags) and torch.equal(loaded.projection, predictor.projection)
    with pytest.raises(ValueError, match="predictor="):
        resolve_predictor(str(tmp_path / "p"), tiny_model("llama", hidden_size=32))
    assert resolve_predictor("auto", tiny_llama).manifest == {"predictor": "prior"}  # nothing ships for it


def test_smollm2_predictor_ships_with_its_manifest():
    stems = {p.name: p for p in shipped_predictors()}
    assert "smollm2-135m" in stems
    manifest = json.loads(stems["smollm2-135m"].with_suffix(".json").read_text())
    assert {"model", "label", "K", "features", "data", "seed", "metrics"} <= manifest.keys()
    assert manifest["features"] == list(FEATURE_NAMES)
    evaluated = {"builtin:pioneer-days", "builtin:dragons-blood", "builtin:travels-in-morocco"}
    assert all(start >= 16384 for text, start, _ in manifest["data"]["segments"] if text in evaluated)


@pytest.mark.parametrize("collection", ["full", "bounded"])
def test_train_relevance_command_writes_a_predictor_atskv_runs_with(tiny_model_dir, tmp_path, token_stream, collection):
    out = tmp_path / "relevance"
    argv = ["train-relevance", "--collection", collection, "--bounded-cache-size", "48", "--chunk-size", "20", "--model", str(tiny_model_dir), "--texts", "builtin:pioneer-days", "--skip-tokens", "0",
            "--segments-per-text", "3", "--segment-length", "200", "--validation-segments", "1", "--horizon", "16",
            "--recent-size", "16", "--first-decision", "48", "--decision-stride", "16", "--samples-per-segment", "300",
            "--output", str(out)] + (["--label", "removal"] if collection == "bounded" else [])
    assert main(argv) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["training"]["label"] == ("removal" if collection == "bounded" else "attention")
    assert ("its removal would make" in manifest["label"]) == (collection == "bounded")
    assert manifest["K"] == 16 and manifest["seed"] == 0 and "validation_auc_mean" in manifest["metrics"]
    assert manifest["training"]["collection"] == collection
    assert ("bounded ATSKV runs" in manifest["label"]) == (collection == "bounded")
    assert manifest["data"]["validation_segments"] == [["builtin:pioneer-days", 400, 600]]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with make_cache(model, "atskv", cache_size=24, recent_size=4, predictor=str(out)) as cache:
        _run(model, cache, token_stream[:, :80] % model.config.vocab_size, 8)
        assert max(cache.cache_tokens()) <= 24 and cache.stats["atskv_evicted_by_threshold"] > 0


# -- the controller and the policy --------------------------------------------------------------
@pytest.mark.parametrize("beta", [1.0, 1.1])
def test_threshold_controller_meets_its_memory_target(beta):
    """Alone (no hard budget): 8 new relevances a step, ``M = 1[r > τ]`` evicts; after warm-up the
    occupancy averages within 5% of the target, and never strays far."""
    controller, generator = ThresholdController(100, beta=beta, q_gain=0.05), torch.Generator().manual_seed(0)
    relevance, occupancy = torch.zeros(0), []
    for _ in range(400):
        relevance = torch.cat([relevance, torch.rand(8, generator=generator)])
        n = relevance.numel()
        relevance = relevance[controller.keep_mask(relevance, n)]
        controller.observe(n, relevance.numel())
        occupancy.append(relevance.numel())
    settled = occupancy[200:]
    assert abs(sum(settled) / len(settled) - 100) <= 5
    assert max(settled) <= 110


def test_atskv_holds_its_budget_and_fills_it(tiny_llama, token_stream):
    with make_cache(tiny_llama, "atskv", cache_size=32, start_size=4, recent_size=8, beta=1.1,
                    predictor="prior") as cache:
        occupancy = []
        with torch.no_grad():
            for start in range(0, 400, 4):
                tiny_llama(input_ids=token_stream[:, start : start + 4], **cache_kwargs(tiny_llama, cache), use_cache=True)
                assert max(cache.cache_tokens()) <= 32
                occupancy.append(sum(cache.cache_tokens()) / len(cache.layers))
        settled = occupancy[len(occupancy) // 2 :]
        assert abs(sum(settled) / len(settled) - 32) <= 0.05 * 32
        assert cache.stats["atskv_evicted_by_threshold"] > 0


@pytest.mark.parametrize("params,name", [
    (dict(cache_size=0), "cache_size"), (dict(cache_size=4, start_size=4), "cache_size"), (dict(start_size=-1), "start_size"),
    (dict(recent_size=0), "recent_size"), (dict(beta=0.0), "beta"), (dict(beta=True), "beta"), (dict(q_gain=2.0), "q_gain"),
    (dict(predictor="no/such/file"), "predictor"), (dict(recent_share=0.0), "recent_share"),
    (dict(recent_share=1.5), "recent_share"),
])
def test_invalid_config_names_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        make_policy_config("atskv", **params)


@pytest.mark.parametrize("share,recent", [(0.5, 498), (0.75, 747), (1.0, 996)])
def test_sizing_protects_recent_share_of_the_budget(share, recent):
    sized = make_policy_config("atskv", recent_share=share).sized(1000)
    assert (sized.cache_size, sized.recent_size) == (1000, recent)


def test_atskv_with_memory_sends_evicted_tokens_to_the_passive_store(tiny_llama, token_stream):
    with make_cache(tiny_llama, "atskv+memory", cache_size=32, recent_size=8, predictor="prior",
                    memory_block_size=8, memory_recall_blocks=1) as cache:
        _run(tiny_llama, cache, token_stream[:, :200], 8)
        assert max(cache.cache_tokens()) <= 32
        assert cache.passive_bytes() > 0
        assert cache.stats["atskv_evicted_by_threshold"] > 0


# -- training labels --------------------------------------------------------------------------
def _full_run(probs: torch.Tensor, values: torch.Tensor):
    from streaming_llm.policies.atskv.train import FullRun

    return FullRun({0: probs}, {}, {}, {}, {0: values})


@pytest.mark.parametrize("label", ["attention", "removal"])
def test_label_sums_over_the_next_k_queries_of_each_kv_head(label):
    """Both collections read the label from ``FullRun.label_cumulative``: per KV head, its rows
    summed over queries, so row ``t + K`` minus row ``t`` is the sum over queries ``t+1..t+K``
    (a sum over KV heads instead once trained the shipped predictor on the wrong label)."""
    from streaming_llm.policies.atskv.train import TrainingSpec, future_labels, removal_change

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 40, 40, generator=generator), dim=-1)
    values = torch.randn(3, 40, 8, generator=generator)
    run, spec = _full_run(probs, values), TrainingSpec(horizon=8, top_fraction=0.25, label=label)
    per_query = probs if label == "attention" else removal_change(probs, values)
    step, positions = 20, torch.arange(4, 12).expand(3, -1)
    summed = per_query[:, step + 1 : step + 1 + spec.horizon].sum(dim=-2).gather(-1, positions)
    expected = (summed >= torch.quantile(summed, 0.75, dim=-1, keepdim=True)).float()
    cumulative = run.label_cumulative(0, label)
    assert cumulative.shape == probs.shape
    assert torch.equal(future_labels(cumulative, step, positions, spec), expected)
    assert not torch.equal(expected[0], expected[1])  # the heads' labels differ: a per-head sum matters
    with pytest.raises(ValueError, match="label must be one of 'attention', 'removal'"):
        run.label_cumulative(0, "attentoin")


def test_removal_change_is_how_far_the_output_moves_without_the_token():
    from streaming_llm.policies.atskv.train import removal_change

    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(5, 5, generator=generator), dim=-1)
    values = torch.randn(5, 4, generator=generator)
    change = removal_change(probs, values)
    for s in range(5):
        for i in range(5):
            kept = probs[s].clone()
            kept[i] = 0
            moved = (probs[s] @ values - (kept / kept.sum()) @ values).norm()
            assert change[s, i] == pytest.approx(float(moved), rel=1e-4, abs=1e-6)
