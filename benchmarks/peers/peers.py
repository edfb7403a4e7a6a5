"""Peer benchmark: kvpress presses and our policies side by side, one run, the same token ids.

Needle and passkey retrieval (question after a long context) and the perplexity of a continuation
after a compressed context, at each ``--lengths`` and ``--ratios`` (kvpress's
``compression_ratio``: the fraction of the context removed; our policies are sized to the same
kept K/V bytes per layer). Every cell's record goes to ``<output>/runs/`` through the run store
(atomic, a rerun skips finished cells); ``<output>/peers.md`` (``--report-name``) is the table of
the records there that the arguments select (lengths, ratios, samples, methods).

Set up once with ``bash benchmarks/peers/setup.sh`` (a venv of its own, .venv-peers), then:

    OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=131072 .venv-peers/bin/python benchmarks/peers/peers.py \\
        --output-dir outputs/peers

``MALLOC_MMAP_THRESHOLD_`` fixes glibc's mmap threshold, so large tensors freed by one cell go back
to the system and the next cell's peak RSS is its own (glibc otherwise raises the threshold
as big blocks are freed and keeps them on its heap).
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engines import KVPRESS_METHODS, OUR_POLICIES, Cell, measured, run_kvpress, run_ours, split_prompt  # noqa: E402

log = logging.getLogger("peers")

BOOKS = ("builtin:pioneer-days", "builtin:dragons-blood", "builtin:travels-in-morocco")
TASKS = ("needle", "passkey", "ppl")
FULL = "full"  # no compression: kvpress's pipeline with a plain DynamicCache


def all_methods() -> list[str]:
    return [FULL, *KVPRESS_METHODS, *OUR_POLICIES]


def side(method: str) -> str:
    return "full" if method == FULL else "kvpress" if method.startswith("kvpress-") else "ours"


def samples_of(task: str, samples: int) -> list[tuple[int, str]]:
    """(sample, detail) of ``task``: PPL has one sample per shipped book; retrieval ``samples``
    prompts with the needle spread over the context (one sample sits in the middle)."""
    if task == "ppl":
        return list(enumerate(BOOKS))
    return [(i, f"depth={(i + 0.5) / samples:.2f}") for i in range(samples)]


def build_cell(tokenizer, task: str, length: int, sample: int, samples: int, continuation: int,
               max_new_tokens: int) -> tuple[tuple[str, ...], Cell]:
    """(answers, Cell) of one sample of ``task`` at ``length``: the same ids for every method."""
    from streaming_llm.data import load_text
    from streaming_llm.tasks.synthetic import SyntheticTaskConfig, build_sample

    def ids_of(book: str) -> list[int]:
        return tokenizer(load_text(book), add_special_tokens=False)["input_ids"]

    if task == "ppl":  # the book's first `length` tokens, then the next `continuation` ones
        ids = ids_of(BOOKS[sample])
        return (), Cell("continuation", tuple(ids[:length]), continuation_ids=tuple(ids[length:length + continuation]))
    built = build_sample(SyntheticTaskConfig(task=task), tokenizer, ids_of(BOOKS[0]), length=length,
                         depth=(sample + 0.5) / samples, sample=sample)
    context, question = split_prompt(built.prompt_ids, built.prompt.context_end)
    return built.answers, Cell("answer", context, question, max_new_tokens=max_new_tokens)


def run_cell(model, tokenizer, method: str, ratio: float, cell: Cell, stop, chunk_size: int) -> dict[str, Any]:
    if side(method) == "ours":
        return measured(lambda: run_ours(model, method, ratio, cell, stop, chunk_size))
    return measured(lambda: run_kvpress(model, method, 0.0 if method == FULL else ratio, cell, stop))


def plan(args) -> list[tuple[str, float]]:
    """(method, ratio) pairs; the full cache runs once, at ratio 0."""
    pairs = []
    for method in args.methods:
        if method not in all_methods():
            raise ValueError(f"--methods: {method!r} is not one of {', '.join(all_methods())}")
        pairs += [(method, 0.0)] if method == FULL else [(method, r) for r in args.ratios]
    return pairs


def units(args) -> list[dict[str, Any]]:
    """Every cell's definition (what determines its record), shortest length first, so an
    interrupted run has whole lengths done."""
    return [{"method": method, "ratio": ratio, "task": task, "length": length, "sample": sample, "detail": detail,
             "model": args.model, "chunk_size": args.chunk_size, "max_new_tokens": args.max_new_tokens,
             "continuation": args.continuation, "samples": args.samples}
            for length in args.lengths for task in args.tasks for sample, detail in samples_of(task, args.samples)
            for method, ratio in plan(args)]


def run(args) -> list[dict[str, Any]]:
    """The records of every unit: stored ones reused, the rest run now (none with ``--report-only``)."""
    from streaming_llm.runs import RunStore, job_key

    store = RunStore(Path(args.output_dir) / "runs", required=("method", "task", "length", "ratio"))
    records, model = [], None
    for definition in units(args):
        key = job_key(f"peer-{definition['task']}", definition)
        record = None if args.force else store.load(key)
        if record is None and not args.report_only:
            if model is None:
                model, tokenizer, stop, cells = load(args)
            record = run_unit(args, definition, model, tokenizer, stop, cells)
            store.save(key, record)
        if record is not None:
            records.append(record)
    return records


def load(args):
    import torch

    from streaming_llm.models import load_model
    from streaming_llm.tasks.runner import stop_token_ids

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    return model, tokenizer, stop_token_ids(tokenizer), {}


def run_unit(args, d: dict[str, Any], model, tokenizer, stop, cells: dict) -> dict[str, Any]:
    from streaming_llm.tasks.scoring import contains_score

    where = (d["task"], d["length"], d["sample"])
    if where not in cells:
        cells[where] = build_cell(tokenizer, *where, args.samples, args.continuation, args.max_new_tokens)
    answers, cell = cells[where]
    log.info("%s %s r=%.2f %s@%d #%d", side(d["method"]), d["method"], d["ratio"], *where)
    result = run_cell(model, tokenizer, d["method"], d["ratio"], cell, stop, args.chunk_size)
    tokens = result.pop("tokens", None)
    record = {**d, "side": side(d["method"]), **result}
    if tokens is not None:
        prediction = tokenizer.decode(tokens, skip_special_tokens=True)
        record.update(prediction=prediction, generated_tokens=len(tokens), answers=list(answers),
                      score=contains_score(prediction, answers))
    return record


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table(records: list[dict[str, Any]], lengths: list[int], command: str) -> str:
    """One row per (method, ratio): accuracy per task and length, PPL per length (over the three
    books), peak RSS above the cell's start (largest over its cells), prefill and decode time."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["method"], r["ratio"])].append(r)
    order = {m: i for i, m in enumerate(all_methods())}
    heads = [f"{t} {L // 1024}k" for t in ("needle", "passkey") for L in lengths] + [f"ppl {L // 1024}k" for L in lengths]
    lines = [f"Command: `{command}`", "",
             "| side | method | ratio | " + " | ".join(heads) + " | peak RSS Δ MiB | prefill s/1k tok | decode ms/tok |",
             "|---" * (6 + len(heads)) + "|"]
    for (method, ratio), rows in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        cells = []
        for task in ("needle", "passkey"):
            for L in lengths:
                scores = [r["score"] for r in rows if r["task"] == task and r["length"] == L]
                cells.append(f"{sum(scores):.0f}/{len(scores)}" if scores else "–")
        for L in lengths:
            nll = [x for r in rows if r["task"] == "ppl" and r["length"] == L for x in r["nll"]]
            cells.append(f"{math.exp(sum(nll) / len(nll)):.2f}" if nll else "–")
        rss = max(r["peak_rss_delta_bytes"] for r in rows) / 2**20
        prefill = sum(r["prefill_seconds"] for r in rows) / sum(r["length"] for r in rows) * 1000
        answer_rows = [r for r in rows if r["task"] != "ppl" and r.get("generated_tokens")]
        decode = (sum(r["decode_seconds"] for r in answer_rows) / sum(r["generated_tokens"] for r in answer_rows) * 1000
                  if answer_rows else None)
        lines.append(f"| {rows[0]['side']} | {method} | {ratio:g} | " + " | ".join(cells)
                     + f" | {rss:.0f} | {prefill:.2f} | {'–' if decode is None else f'{decode:.1f}'} |")
    if not any(r["task"] == "ppl" for r in records):  # e.g. --tasks needle passkey: no per-book table
        return "\n".join(lines) + "\n"
    lines += ["", "PPL per book (continuation after the compressed context):", "",
              "| method | ratio | length | " + " | ".join(b.split(":")[1] for b in BOOKS) + " |",
              "|---|---|---|" + "---|" * len(BOOKS)]
    for (method, ratio), rows in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        for L in lengths:
            by_book = {r["detail"]: r for r in rows if r["task"] == "ppl" and r["length"] == L}
            if by_book:
                ppl = [f"{math.exp(_mean(by_book[b]['nll'])):.2f}" if b in by_book else "–" for b in BOOKS]
                lines.append(f"| {method} | {ratio:g} | {L} | " + " | ".join(ppl) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", nargs="+", default=all_methods(), metavar="METHOD",
                        help=f"default: all of {', '.join(all_methods())}")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--samples", type=int, default=2, help="needle and passkey prompts per length")
    parser.add_argument("--continuation", type=int, default=128, help="continuation tokens scored for PPL")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--chunk-size", type=int, default=256, help="our prefill chunk (kvpress prefills whole)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default="outputs/peers")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="write the table of the records already in --output-dir; run nothing")
    parser.add_argument("--report-name", default="peers.md",
                        help="file name of the table inside --output-dir, so that tables of different "
                             "selections of one folder's records (e.g. --samples 1 and 2) sit side by side")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from streaming_llm.runs import write_atomic

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for ratio in args.ratios:
        if not 0 < ratio < 1:
            raise SystemExit(f"peers: error: --ratios must be in (0, 1); got {ratio}")
    records = run(args)
    command = "OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=131072 .venv-peers/bin/python benchmarks/peers/peers.py " \
              + shlex.join(argv)
    text = "# Peer benchmark: kvpress and streaming_llm\n\n" + table(records, args.lengths, command)
    write_atomic(Path(args.output_dir) / args.report_name, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
