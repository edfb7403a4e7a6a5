"""``streaming-llm train-relevance``: train ATSKV's relevance predictor (:mod:`.train`) and save
``OUTPUT.pt`` with its manifest ``OUTPUT.json``."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from ...checks import check_fraction, check_int
from .train import LABELS, TrainingSpec, train

log = logging.getLogger("streaming_llm.atskv")

_HELP = {
    "model": "built-in name, .gguf file, local dir or HF id",
    "texts": "training texts (builtin:NAME or files); segments start after --skip-tokens",
    "skip_tokens": "tokens skipped at the start of each text (keep the evaluated prefix out of training)",
    "segments_per_text": "full-cache runs per text",
    "segment_length": "tokens per full-cache run",
    "validation_segments": "last segments held out for the manifest's metrics",
    "horizon": "K: queries after the decision step whose attention defines the label",
    "label": "what the next K queries sum: the 'attention' a token receives, or the change its 'removal' makes to the attention output",
    "top_fraction": "share of evictable tokens labelled relevant at each decision step",
    "start_size": "first tokens excluded from the candidates (sinks)",
    "recent_size": "newest tokens excluded from the candidates",
    "first_decision": "first decision step of each run",
    "decision_stride": "queries between decision steps",
    "samples_per_segment": "samples kept per layer and run",
    "collection": "features from 'full' cache runs or from 'bounded' ATSKV runs (what the policy sees)",
    "bounded_cache_size": "slots per layer of the bounded runs",
    "chunk_size": "tokens per forward of the bounded runs",
    "l2": "L2 penalty of the logistic regression",
    "seed": "seed of the projection and the sampling",
}


_CHOICES = {"collection": ("full", "bounded"), "label": LABELS}


def add_train_relevance_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train-relevance", help="train ATSKV's relevance predictor from full-cache runs",
                                   description=__doc__)
    defaults = TrainingSpec()
    for f in fields(TrainingSpec):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name in _CHOICES:
            parser.add_argument(flag, choices=_CHOICES[f.name], default=value, help=f"{_HELP[f.name]} (default {value})")
        elif isinstance(value, tuple):
            parser.add_argument(flag, nargs="+", default=list(value), help=f"{_HELP[f.name]} (default {' '.join(value)})")
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"{_HELP[f.name]} (default {value})")
    parser.add_argument("--output", required=True, help="write OUTPUT.pt and OUTPUT.json")
    parser.set_defaults(func=cmd_train_relevance)
    return parser


def spec_from_args(args: argparse.Namespace) -> TrainingSpec:
    values = {f.name: getattr(args, f.name) for f in fields(TrainingSpec)}
    values["texts"] = tuple(values["texts"])
    for name in ("skip_tokens", "start_size", "seed"):
        check_int("--" + name.replace("_", "-"), values[name], 0)
    for name in ("segments_per_text", "segment_length", "horizon", "recent_size", "first_decision",
                 "decision_stride", "samples_per_segment", "validation_segments", "chunk_size"):
        check_int("--" + name.replace("_", "-"), values[name], 1)
    check_int("--bounded-cache-size", values["bounded_cache_size"], values["start_size"] + 1)
    check_fraction("--top-fraction", values["top_fraction"])
    return TrainingSpec(**values)


def cmd_train_relevance(args: argparse.Namespace) -> int:
    import torch

    from ...models import load_model

    spec = spec_from_args(args)
    torch.manual_seed(spec.seed)
    model, tokenizer = load_model(spec.model, dtype="float32", device="cpu")
    predictor = train(model, tokenizer, spec, log=log.info)
    weights, manifest = predictor.save(args.output)
    print(f"wrote {weights} and {manifest}; validation AUC {predictor.manifest['metrics']['validation_auc_mean']:.3f}")
    return 0
