"""Training ATSKV's relevance predictor from full-cache runs (``streaming-llm train-relevance``).

**Label** (Locret-like, over a horizon): at a decision step ``t`` (a query index of a full-cache
run), token ``i`` of layer ``l`` is relevant when the attention it receives from the next ``K``
queries, ``sum_{s=t+1}^{t+K} Ā^l[s, i]`` (``Ā^l``: the layer's probabilities averaged over its
query heads), is in the top ``top_fraction`` of that sum over the evictable tokens at ``t`` (not
one of the first ``start_size`` tokens, older than the ``recent_size`` newest).

With ``label="removal"`` the sum is over what removing ``i`` would change in the layer's
attention output instead of its probability: ``sum_s Ā[s, i] / (1 - Ā[s, i]) · ||v_i - o_s||``, where
``o_s = sum_j Ā[s, j] v_j``. That is exact for one token dropped from one query's softmax (the
output becomes ``(o_s - Ā[s, i] v_i) / (1 - Ā[s, i])``); it is computed from the probabilities
averaged over the query heads sharing a KV head, so it approximates each query head's own change.
A token that gets attention but whose value is what the others already supply is not relevant.

**Data**: contiguous segments of ``segment_length`` tokens taken after the first ``skip_tokens``
tokens of each training text; the last ``validation_segments`` segments are held out for the
manifest's metrics. Everything random (projection, sampling) follows ``seed``.

**Features**: with ``collection="full"`` those the policy would compute at ``t`` with the full
cache; with ``collection="bounded"`` those it does compute while it runs with ``bounded_cache_size``
slots (ranking by the untrained prior), so the predictor learns on the statistics it meets in use
(attention shares over a few hundred slots, not over the whole segment).

**Fit**: per layer, a logistic regression on standardised features (L-BFGS, L2 ``l2``).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field

import torch

from ...compat import cache_kwargs, returned_cache
from ...data import load_text
from .features import FEATURE_NAMES, RECENT_WINDOW, feature_matrix, head_norms, hidden_projection, recent_decay, \
    token_flags
from ..scored import per_kv_head
from .predictor import RelevancePredictor, model_fingerprint
from .tap import FeatureTap

#: what a label sums over the next K queries (TrainingSpec.label; module docstring)
LABELS = ("attention", "removal")

#: the baselines scored against the same labels: feature columns that are heuristic scores
HEURISTICS = {"h2o_accumulated_attention": "attention_accumulated", "tova_last_query": "attention_last",
              "key_norm": "key_norm", "value_norm": "value_norm"}


@dataclass
class TrainingSpec:
    model: str = "smollm2-135m"
    texts: tuple[str, ...] = ("builtin:pioneer-days", "builtin:dragons-blood")
    skip_tokens: int = 20000
    segments_per_text: int = 4
    segment_length: int = 1024
    validation_segments: int = 2
    horizon: int = 64  # K
    label: str = "attention"  # what the next K queries sum: "attention" received, or "removal": the output change
    top_fraction: float = 0.25
    start_size: int = 4
    recent_size: int = 64
    first_decision: int = 128
    decision_stride: int = 32
    samples_per_segment: int = 3000  # per layer
    collection: str = "full"  # features from the full run, or "bounded": from an ATSKV run of bounded_cache_size
    bounded_cache_size: int = 256
    chunk_size: int = 32
    l2: float = 1e-3
    seed: int = 0

    def label_text(self) -> str:
        summed = ("the attention it receives there from the next K={k} queries (sum over queries t+1..t+K of the probability "
                  "averaged over the query heads sharing that KV head)" if self.label == "attention" else
                  "the change its removal would make to the attention output of the next K={k} queries (sum over queries s = "
                  "t+1..t+K of a/(1-a) ||v_i - o_s||, a the probability averaged over the query heads sharing that KV head, "
                  "o_s = sum_j a_sj v_j)").format(k=self.horizon)
        return (f"token i is relevant in a KV head at decision step t when {summed} is in the top "
                f"{self.top_fraction:.0%} of that sum over the evictable tokens at t (position >= {self.start_size}, "
                f"older than the {self.recent_size} newest); attention from full-cache runs; features from "
                f"{'full-cache runs' if self.collection == 'full' else f'bounded ATSKV runs of {self.bounded_cache_size} slots (prior ranking, chunks of {self.chunk_size})'}")


# -- samples from one full-cache run -------------------------------------------------------
@dataclass
class LayerSamples:
    features: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.features), torch.cat(self.labels)


def _recent_at(probs: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Recent-window averages ``(len(times), L)`` at each decision step (closed form of features.recent_update)."""
    decay = recent_decay()
    steps = torch.arange(probs.shape[0])
    lag = times[:, None] - steps[None, :]
    weights = torch.where(lag >= 0, (1 - decay) * decay ** lag.clamp(min=0).double(), 0.0).float()
    return weights @ probs


def layer_samples(probs: torch.Tensor, hidden: torch.Tensor, key_norm: torch.Tensor, value_norm: torch.Tensor,
                  flags: torch.Tensor, label_cumulative: torch.Tensor, spec: TrainingSpec, generator: torch.Generator,
                  heads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(S, F)`` and labels ``(S,)`` of one KV head of one layer of one segment (``1 /
    heads`` of the samples); ``probs`` ``(L, L)``, ``hidden`` ``(L, HIDDEN_DIMS)`` projected, norms
    ``(L,)``, ``flags`` ``(L, 4)``; ``label_cumulative`` ``(L, L)``: what the label sums, summed over
    the queries so far (``FullRun.label_cumulative`` of this KV head)."""
    length = probs.shape[0]
    cumulative = probs.cumsum(dim=0)
    times = torch.arange(spec.first_decision, length - spec.horizon, spec.decision_stride)
    recent = _recent_at(probs, times)
    features, labels = [], []
    for row, t in enumerate(times.tolist()):
        index = torch.arange(spec.start_size, t - spec.recent_size + 1)
        labels.append(future_labels(label_cumulative, t, index, spec))
        features.append(feature_matrix(hidden[index], cumulative[t, index], recent[row, index], probs[t, index],
                                       t - index, index, t + 1, key_norm[index], value_norm[index], flags[index]))
    return _sample(torch.cat(features), torch.cat(labels), spec.samples_per_segment // heads, generator)


def _sample(x: torch.Tensor, y: torch.Tensor, count: int, generator: torch.Generator):
    pick = torch.randperm(x.shape[0], generator=generator)[:count]
    return x[pick], y[pick]


class _AttentionRecorder:
    """Forward hooks on the attention modules noting each layer's head-averaged probabilities
    (eager attention returns them), removed by :meth:`remove`."""

    def __init__(self, model: torch.nn.Module, num_kv_heads: int):
        self.num_kv_heads = num_kv_heads
        self.probs: dict[int, torch.Tensor] = {}
        modules = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
        self.handles = [m.register_forward_hook(self._hook(m.layer_idx)) for m in modules]

    def _hook(self, layer_idx: int):
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the attention module returned no probabilities; train-relevance needs eager attention")
            self.probs[layer_idx] = per_kv_head(weights.float(), self.num_kv_heads)  # (H_kv, L, L)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class FullRun:
    """One full-cache run of a segment: per layer the probabilities per KV head ``(H_kv, L, L)``
    (averaged over the query heads sharing it), the projected inputs to attention
    ``(L, HIDDEN_DIMS)``, key/value norms ``(H_kv, L)`` and the values ``(H_kv, L, D)``."""

    probs: dict[int, torch.Tensor]
    hidden: dict[int, torch.Tensor]
    key_norm: dict[int, torch.Tensor]
    value_norm: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]

    def label_cumulative(self, layer: int, label: str) -> torch.Tensor:
        """``(H_kv, L, L)``: what the label sums, per query and token, summed over the queries so far."""
        probs = self.probs[layer]
        if label == "attention":
            return probs.cumsum(dim=-2)
        if label == "removal":
            return removal_change(probs, self.values[layer]).cumsum(dim=-2)
        raise ValueError(f"label must be one of {', '.join(map(repr, LABELS))}; got {label!r}")


def removal_change(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(..., L, L)``: how far query ``s``'s attention output moves when token ``i`` alone is removed
    from its softmax, ``a / (1 - a) · ||v_i - o_s||`` with ``a = probs[s, i]``, ``o_s = probs[s] @ values``.
    Zero where ``s`` does not attend to ``i``; ``values`` ``(..., L, D)``."""
    outputs = probs @ values
    distance = (values.square().sum(-1)[..., None, :] - 2 * outputs @ values.transpose(-1, -2)
                + outputs.square().sum(-1)[..., :, None]).clamp(min=0).sqrt()
    return probs / (1 - probs).clamp(min=1e-6) * distance


@torch.no_grad()
def full_run(model, ids: torch.Tensor, projection: torch.Tensor) -> FullRun:
    from transformers import DynamicCache

    tap = FeatureTap()
    recorder = _AttentionRecorder(model, model_fingerprint(model)["num_key_value_heads"])
    hooks = [m.register_forward_pre_hook(lambda mod, a, k, i=m.layer_idx: tap.note_hidden(i, mod, a, k), with_kwargs=True)
             for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, DynamicCache()))
    finally:
        model.set_attn_implementation(previous)
        recorder.remove()
        for hook in hooks:
            hook.remove()
    layers = returned_cache(out).layers
    return FullRun(recorder.probs, {i: h.float() @ projection for i, h in tap.hidden.items()},
                   {i: head_norms(layers[i].keys) for i in recorder.probs},
                   {i: head_norms(layers[i].values) for i in recorder.probs},
                   {i: layers[i].values[0].float() for i in recorder.probs})


def segment_samples(model, ids: torch.Tensor, projection: torch.Tensor, flag_table: torch.Tensor,
                    spec: TrainingSpec, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(features, labels)`` from one segment ``ids`` ``(1, L)``: features of a full-cache
    run (``spec.collection == "full"``) or of a bounded run (``"bounded"``), labels from the full run."""
    run = full_run(model, ids, projection)
    if spec.collection == "bounded":
        return bounded_samples(model, ids, run, projection, flag_table, spec, generator)
    flags = flag_table[ids[0]]
    samples = []
    for layer in sorted(run.probs):
        heads = range(run.probs[layer].shape[0])
        label_cumulative = run.label_cumulative(layer, spec.label)
        per_head = [layer_samples(run.probs[layer][h], run.hidden[layer], run.key_norm[layer][h],
                                  run.value_norm[layer][h], flags, label_cumulative[h], spec, generator, len(heads))
                    for h in heads]
        samples.append((torch.cat([x for x, _ in per_head]), torch.cat([y for _, y in per_head])))
    return samples


def future_labels(cumulative: torch.Tensor, step: int, positions: torch.Tensor, spec: TrainingSpec) -> torch.Tensor:
    """The label of the tokens at ``positions`` ``(..., c)`` at decision ``step``: top
    ``top_fraction`` (per leading row: per KV head) of what the label sums over the next ``K``
    queries of the full run (``cumulative`` ``(..., L, L)``, summed over queries)."""
    later, now = cumulative[..., step + spec.horizon, :], cumulative[..., step, :]
    future = later.gather(-1, positions) - now.gather(-1, positions)
    return (future >= torch.quantile(future, 1 - spec.top_fraction, dim=-1, keepdim=True)).float()


@torch.no_grad()
def bounded_samples(model, ids: torch.Tensor, run: FullRun, projection: torch.Tensor, flag_table: torch.Tensor,
                    spec: TrainingSpec, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Features as the policy sees them at run time: the candidates of an ATSKV cache of
    ``bounded_cache_size`` slots whose predictor is the prior (H2O's ranking), at every step it
    evicts; each labelled by the full run's attention to the same token over the next ``K`` queries."""
    from .config import ATSKVConfig

    config = ATSKVConfig(cache_size=spec.bounded_cache_size, start_size=spec.start_size,
                         recent_size=spec.recent_size, predictor="prior")
    runner = RelevancePredictor.prior(model_fingerprint(model)["num_hidden_layers"])
    runner.projection, runner.flags = projection, flag_table
    records: dict[int, list] = {}
    cache = config.cache_class().from_model(model, config)
    try:
        for layer in cache.layers:
            layer.policy.predictor = runner
            layer.policy.recorder = lambda i, step, positions, x: records.setdefault(i, []).append((step, positions, x))
        for start in range(0, ids.shape[1], spec.chunk_size):
            model(input_ids=ids[:, start : start + spec.chunk_size], use_cache=True, **cache_kwargs(model, cache))
    finally:
        cache.disable()
    samples = []
    for layer in sorted(records):
        cumulative = run.label_cumulative(layer, spec.label)
        kept = [(x.flatten(0, 1), future_labels(cumulative, step, positions.to(cumulative.device), spec).flatten())
                for step, positions, x in records[layer] if step + spec.horizon < ids.shape[1]]
        samples.append(_sample(torch.cat([k[0] for k in kept]), torch.cat([k[1] for k in kept]),
                               spec.samples_per_segment, generator))
    return samples


# -- fitting and metrics ---------------------------------------------------------------------
def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged)."""
    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    sorted_scores = scores.double()[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    average = (start + (counts + 1) / 2).double()
    ranks[order] = average[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100):
    """``(w, b, mean, std, losses)``: logistic regression on standardised ``x`` ``(N, F)``;
    ``losses`` is the training loss after each L-BFGS iteration."""
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")
    losses: list[float] = []

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()[0], mean, std, losses


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))


def heuristic_aucs(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {name: auc(x[:, FEATURE_NAMES.index(column)], y) for name, column in HEURISTICS.items()}


# -- the whole run ---------------------------------------------------------------------------
def text_segments(tokenizer, spec: TrainingSpec) -> list[tuple[str, int, torch.Tensor]]:
    """``(text, first token, ids (1, L))`` of every training segment, in order."""
    segments = []
    for text in spec.texts:
        ids = tokenizer(load_text(text), return_tensors="pt").input_ids
        for k in range(spec.segments_per_text):
            start = spec.skip_tokens + k * spec.segment_length
            if start + spec.segment_length > ids.shape[1]:
                raise ValueError(f"{text} has {ids.shape[1]} tokens, too few for segment {k} at {start} "
                                 f"(skip_tokens + segments_per_text x segment_length)")
            segments.append((text, start, ids[:, start : start + spec.segment_length]))
    return segments


def train(model, tokenizer, spec: TrainingSpec, log=print) -> RelevancePredictor:
    """Collect labels from full-cache runs of ``model`` on ``spec``'s segments and fit the predictor."""
    began = time.time()
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    fingerprint = model_fingerprint(model)
    projection = hidden_projection(fingerprint["hidden_size"], spec.seed)
    flag_table = token_flags(tokenizer, fingerprint["vocab_size"])
    segments = text_segments(tokenizer, spec)
    if spec.validation_segments >= len(segments):
        raise ValueError(f"validation_segments must be below the {len(segments)} segments")
    split = len(segments) - spec.validation_segments
    train_set = [LayerSamples() for _ in range(fingerprint["num_hidden_layers"])]
    valid_set = [LayerSamples() for _ in range(fingerprint["num_hidden_layers"])]
    for k, (text, start, ids) in enumerate(segments):
        for layer, (x, y) in enumerate(segment_samples(model, ids, projection, flag_table, spec, generator)):
            target = train_set if k < split else valid_set
            target[layer].features.append(x)
            target[layer].labels.append(y)
        log(f"segment {k + 1}/{len(segments)}: {text} tokens {start}..{start + spec.segment_length}")
    weights, biases, means, stds, per_layer = [], [], [], [], []
    for layer in range(len(train_set)):
        x, y = train_set[layer].tensors()
        w, b, mean, std, losses = fit_logistic(x, y, spec.l2)
        vx, vy = valid_set[layer].tensors()
        logits = ((vx - mean) / std) @ w + b
        per_layer.append({"layer": layer, "train_loss_first": losses[0], "train_loss_last": losses[-1],
                          "validation_loss": log_loss(logits, vy), "validation_auc": auc(logits, vy),
                          "validation_heuristic_auc": heuristic_aucs(vx, vy)})
        weights.append(w), biases.append(b), means.append(mean), stds.append(std)
    metrics = summarise(per_layer)
    log(f"validation AUC (mean over layers): predictor {metrics['validation_auc_mean']:.3f}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics["validation_heuristic_auc_mean"].items()))
    manifest = {
        "predictor": "logistic regression per layer, r = sigmoid(w^T [h; a; f] + b) on standardised features",
        "model": spec.model, "model_fingerprint": fingerprint, "label": spec.label_text(), "K": spec.horizon,
        "features": list(FEATURE_NAMES), "recent_window": RECENT_WINDOW,
        "hidden_projection": f"fixed Gaussian (hidden_size x {projection.shape[1]}), variance 1/hidden_size, seed {spec.seed}",
        "data": {"texts": list(spec.texts), "segments": [[t, s, s + spec.segment_length] for t, s, _ in segments],
                 "validation_segments": [[t, s, s + spec.segment_length] for t, s, _ in segments[split:]]},
        "training": asdict(spec), "seed": spec.seed, "metrics": metrics, "per_layer": per_layer,
        "seconds": round(time.time() - began, 1), "torch": torch.__version__, "python": platform.python_version(),
    }
    return RelevancePredictor(torch.stack(weights), torch.stack(biases), torch.stack(means), torch.stack(stds),
                              projection, flag_table, manifest)


def summarise(per_layer: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    names = per_layer[0]["validation_heuristic_auc"]
    return {
        "train_loss_first_mean": mean([p["train_loss_first"] for p in per_layer]),
        "train_loss_last_mean": mean([p["train_loss_last"] for p in per_layer]),
        "validation_loss_mean": mean([p["validation_loss"] for p in per_layer]),
        "validation_auc_mean": mean([p["validation_auc"] for p in per_layer]),
        "validation_heuristic_auc_mean": {n: mean([p["validation_heuristic_auc"][n] for p in per_layer]) for n in names},
    }
