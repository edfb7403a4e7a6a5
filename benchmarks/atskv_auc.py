"""Predictor quality of ATSKV on a shipped book no training segment came from.

For every full-cache run of ``--segment-length`` tokens of ``--text`` (default
builtin:travels-in-morocco, which the shipped SmolLM2 predictor never saw), labels and features
are built exactly as ``streaming-llm train-relevance`` builds them (the label and its K come from
the predictor's manifest), and the ROC AUC of the predictor is set next to the AUC of the
heuristic scores (H2O's accumulated attention, TOVA's last-query attention, key norm, value norm)
against the same labels, per layer and averaged over layers. Writes ``OUTPUT/auc.json`` and
``OUTPUT/auc.md`` atomically.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/atskv_auc.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import torch

from streaming_llm.data import load_text
from streaming_llm.models import load_model
from streaming_llm.policies.atskv.predictor import resolve_predictor
from streaming_llm.policies.atskv.train import TrainingSpec, auc, heuristic_aucs, segment_samples, summarise
from streaming_llm.report import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--predictor", default="auto")
    parser.add_argument("--text", default="builtin:travels-in-morocco")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--segment-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/results/atskv")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    predictor = resolve_predictor(args.predictor, model)
    trained = predictor.manifest["training"]
    spec = TrainingSpec(**{f.name: trained[f.name] for f in fields(TrainingSpec) if f.name in trained})
    spec = TrainingSpec(**{**spec.__dict__, "segment_length": args.segment_length, "seed": args.seed})
    if any(t == args.text for t, *_ in predictor.manifest["data"]["segments"]):
        raise SystemExit(f"{args.text} has training segments; pick a text the predictor never saw")
    ids = tokenizer(load_text(args.text), return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(args.seed)
    per_layer: dict[int, list] = {}
    for k in range(args.segments):
        segment = ids[:, k * args.segment_length : (k + 1) * args.segment_length]
        for layer, (x, y) in enumerate(segment_samples(model, segment, predictor.projection, predictor.flags, spec, generator)):
            per_layer.setdefault(layer, []).append((x, y))
        print(f"segment {k + 1}/{args.segments} done", flush=True)
    rows = []
    for layer, parts in sorted(per_layer.items()):
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        rows.append({"layer": layer, "validation_auc": auc(predictor.logits(layer, x), y),
                     "validation_heuristic_auc": heuristic_aucs(x, y), "train_loss_first": float("nan"),
                     "train_loss_last": float("nan"), "validation_loss": float("nan"), "samples": int(y.numel())})
    metrics = summarise(rows)
    result = {"text": args.text, "tokens": [0, args.segments * args.segment_length], "model": args.model,
              "predictor": args.predictor, "label": spec.label_text(), "seed": args.seed,
              "auc_mean_over_layers": {"atskv_predictor": metrics["validation_auc_mean"],
                                       **metrics["validation_heuristic_auc_mean"]},
              "per_layer": rows}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "auc.json", json.dumps(result, indent=2) + "\n")
    names = list(result["auc_mean_over_layers"])
    lines = [f"# ATSKV predictor AUC on {args.text} (tokens 0..{args.segments * args.segment_length}, never trained on)", "",
             f"Label: {spec.label_text()}.", "",
             f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python {shlex.join(['benchmarks/atskv_auc.py', *sys.argv[1:]])}`", "",
             "| layer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             "| mean | " + " | ".join(f"{result['auc_mean_over_layers'][n]:.3f}" for n in names) + " |"]
    for row in rows:
        values = [row["validation_auc"], *row["validation_heuristic_auc"].values()]
        lines.append(f"| {row['layer']} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    write_atomic(out / "auc.md", "\n".join(lines) + "\n")
    print("\n".join(lines[:10]))


if __name__ == "__main__":
    main()
