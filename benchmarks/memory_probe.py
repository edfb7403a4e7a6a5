"""Probe (issue 16): which memory settings let SmolLM2 answer a passkey or needle whose sentence was evicted.

For each haystack and depth (one prompt each, seed 0), streaming 4+252 plus recalled blocks with
each memory variant; prints whether the answer holds the value and, with ``--trace``, which layers
recalled a block holding the needle at the prompt's last forward (the forward whose logits give the
first answer token). Used to choose memory defaults on a text that no report uses (WikiText-2),
before the shipped books:

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/memory_probe.py 4096 \\
        /work/shared/data/wikitext-2-raw/wiki.test.raw summary=representative summary=minmax \\
        summary=quantized,summary_bits=2 summary=quantized,summary_bits=4 summary=quantized,summary_bits=8
    # the needle task, traced
    ... benchmarks/memory_probe.py 4096 /work/shared/data/wikitext-2-raw/wiki.test.raw --task needle --trace \\
        summary=quantized block_size=32,recall_blocks=8

Arguments: LENGTH HAYSTACK[,HAYSTACK...] VARIANT... where a VARIANT is ``KEY=VALUE,...`` of
:class:`streaming_llm.memory.MemoryConfig` (block_size 64 and recall_blocks 4 unless given; the
policy is streaming 4+252 unless ``recent_size=`` is given), or ``full``.
"""

import argparse
import time

import torch

from streaming_llm.api import cache_from_config
from streaming_llm.compat import cache_kwargs
from streaming_llm.data import load_text
from streaming_llm.evaluation.runs import RunSpec
from streaming_llm.memory.guide import RecallGuide
from streaming_llm.memory.layer import QueryMean
from streaming_llm.models import load_model
from streaming_llm.tasks.prompting import PromptFormat
from streaming_llm.tasks.runner import stop_token_ids
from streaming_llm.tasks.synthetic import SyntheticTaskConfig, build_sample

POLICY_KEYS = ("recent_size", "start_size")


def variant_config(text: str):
    """``KEY=VALUE,...`` memory (and streaming) parameters -> the streaming + memory config;
    ``full`` -> the full cache (the reference: what the model answers with nothing evicted)."""
    if text == "full":
        return RunSpec.parse("full").config()
    memory = {"block_size": "64", "recall_blocks": "4"}
    policy = {"start_size": "4", "recent_size": "252"}
    for key, value in (item.split("=", 1) for item in filter(None, text.split(","))):
        (policy if key in POLICY_KEYS else memory)[key] = value
    params = ",".join([f"{k}={v}" for k, v in policy.items()] + [f"memory_{k}={v}" for k, v in memory.items()])
    return RunSpec.parse(f"streaming+memory:{params}").config()


def needle_layers(cache, first: int, last: int) -> str:
    """Per layer, how many KV heads' current selection holds a block with a position in
    ``[first, last)``, as a string of digits (one per layer; '.' = no selection yet)."""
    marks = []
    for layer in cache.layers:
        memory = getattr(layer, "memory", None)  # the full cache has none
        selected = None if memory is None else memory.selected_positions()
        if selected is None:
            marks.append(".")
            continue
        hits = sum(any(bool(((block >= first) & (block < last)).any()) for block in head) for head in selected)
        marks.append(str(hits))
    return "".join(marks)


def force_needle_blocks(cache, first: int, last: int, layers: slice = slice(None)) -> None:
    """Oracle (diagnostics): every KV head of the ``layers`` recalls the blocks holding a position
    in ``[first, last)`` whenever they are in the store, the rest of its recall by the summaries."""
    def adjust(scores, store):
        boosted = scores.clone()
        for index in range(scores.shape[-1]):
            inside = (store.positions[index] >= first) & (store.positions[index] < last)  # (H_kv, bs)
            boosted[:, index] += inside.any(dim=-1).to(scores.device) * 1e9
        return boosted
    for layer in cache.layers[layers]:
        if getattr(layer, "memory", None) is not None:
            layer.memory.score_adjust = adjust


class BlockRanks:
    """Diagnostics (``--ranks``): at the prompt's last forward, the rank of the needle's best block
    among every block of the store by several scoring rules, per layer (the best of its KV heads),
    from the same queries and store; the run itself recalls by its own variant. Rules: the run's
    summary (``summary``), the exact fp32 keys with the same rule (``exact``: is the summary's
    precision the miss?), both with the queries centred on the stream's mean query
    (``*-centred``), only the last 16 queries (``summary-last16``), and the largest share of any
    one query (``summary-qmax``)."""

    RULES = ("summary", "exact", "summary-centred", "exact-centred", "summary-last16", "summary-qmax")

    def __init__(self, cache):
        self.memories = [getattr(layer, "memory", None) for layer in cache.layers]
        self.last = [None] * len(self.memories)
        self.means = [QueryMean() for _ in self.memories]
        for index, memory in enumerate(self.memories):
            if memory is not None:
                memory.score_observer = self._observer(index)

    def _observer(self, index: int):
        def observe(query, first, available, seen_tokens):
            self.means[index].add(self.memories[index].position_free(query, seen_tokens))
            self.last[index] = (query, first, available, seen_tokens)
        return observe

    def ranks(self, first_needle: int, last_needle: int) -> dict[str, str]:
        """Per rule, one character per layer: the needle block's rank (0 = first; '+' = 10 or
        more; '.' = no store yet; '-' = the needle is not in a sealed block)."""
        from streaming_llm.memory.summaries import QuantizedKeys, key_mass

        marks = {rule: [] for rule in self.RULES}
        for index, memory in enumerate(self.memories):
            if memory is None or self.last[index] is None:
                for rule in self.RULES:
                    marks[rule].append(".")
                continue
            query, first, available, seen = self.last[index]
            config = memory.config
            queries = query[..., -config.score_queries :, :]
            mean = self.means[index].mean
            store = memory.store
            inside = torch.stack([((store.positions[i] >= first_needle) & (store.positions[i] < last_needle)).any(dim=-1)
                                  for i in range(available)], dim=1)  # (H_kv, N)
            if not bool(inside.any()):
                for rule in self.RULES:
                    marks[rule].append("-")
                continue
            exact = torch.stack([torch.stack([store.keys[i].head(h, "cpu", torch.float32)[0]
                                              for h in range(inside.shape[0])]) for i in range(available)])

            def vectors(qs, centred):
                if centred:
                    return memory.centred_vectors(memory.position_free(qs, seen), mean, first, seen)
                return memory.scoring_vectors(qs, None, first, seen)

            summaries = memory.summaries.first(available)
            scores = {
                "summary": memory.summarizer.score(summaries, vectors(queries, False)),
                "exact": key_mass(exact, vectors(queries, False), config.block_score, config.query_reduce),
                "summary-centred": memory.summarizer.score(summaries, vectors(queries, True)),
                "exact-centred": key_mass(exact, vectors(queries, True), config.block_score, config.query_reduce),
                "summary-last16": memory.summarizer.score(summaries, vectors(queries[..., -16:, :], False)),
            }
            if isinstance(memory.summarizer, QuantizedKeys):
                scores["summary-qmax"] = QuantizedKeys(memory.summarizer.bits, config.block_score, "max").score(
                    summaries, vectors(queries, False))
            for rule in self.RULES:
                if rule not in scores:
                    marks[rule].append("?")
                    continue
                score = scores[rule].float().cpu()
                best = score.masked_fill(~inside, float("-inf")).amax(dim=-1, keepdim=True)  # (H_kv, 1)
                rank = int((score > best).sum(dim=-1).min())
                marks[rule].append(str(rank) if rank < 10 else "+")
        return {rule: "".join(chars) for rule, chars in marks.items()}


def layer_guide(cache, first: int, last: int, followers: range | None = None) -> RecallGuide:
    """Diagnostics (``--guide FIRST:LAST``): the library's :class:`RecallGuide` with layers
    FIRST..LAST-1 as guides and any ``followers`` (by default every other layer): those after the
    guides follow this forward's choice, those before them and the guides themselves the previous
    forward's. ``memory_guide_layers`` is the case where every layer after the guides follows."""
    followers = followers if followers is not None else [
        index for index in range(len(cache.layers)) if not first <= index < last]
    guide = RecallGuide(first, last - 1, followers)
    guide.attach(cache)
    return guide


def run_name(variant: str, oracle: str | None, guide: str | None = None) -> str:
    name = variant if oracle is None else f"{variant} oracle[{oracle}]"
    return name if guide is None else f"{name} guide[{guide}]"


@torch.inference_mode()  # without it every chunk's autograd graph stays alive through the cache: ~2 GB per 8k prompt
def answer(model, cache, prompt_ids, chunk_size: int, new_tokens: int, stop, trace_span, last_steps: int = 0,
           ranks: BlockRanks | None = None):
    """Greedy answer with ``cache``; the needle trace after the prompt's last forward (or '').
    ``last_steps``: the prompt's last tokens fed one at a time, as decode steps after the rest."""
    cache_arg = cache_kwargs(model, cache)
    ids = torch.tensor([prompt_ids])
    length = ids.shape[1]
    bounds = sorted({*range(0, length - last_steps, chunk_size), *range(length - last_steps, length), length})
    for begin, end in zip(bounds, bounds[1:]):
        logits = model(input_ids=ids[:, begin:end], **cache_arg, use_cache=True, logits_to_keep=1).logits
    trace = needle_layers(cache, *trace_span) if trace_span else ""
    if ranks is not None and trace_span:
        trace += "".join(f"\n    {rule:16s} {marks}" for rule, marks in ranks.ranks(*trace_span).items())
    tokens = []
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        tokens.append(token)
        logits = model(input_ids=torch.tensor([[token]]), **cache_arg, use_cache=True, logits_to_keep=1).logits
    return tokens, trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("length", type=int)
    parser.add_argument("haystacks")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--task", choices=("passkey", "needle"), default="passkey")
    parser.add_argument("--depths", type=float, nargs="+", default=(0.25, 0.5, 0.75))
    parser.add_argument("--samples", type=int, default=1, help="prompts per depth (seeds of the sample index)")
    parser.add_argument("--first-sample", type=int, default=0,
                        help="index of the first sample (samples FIRST..FIRST+N-1: a later run adds new prompts)")
    parser.add_argument("--trace", action="store_true", help="print, per layer, the KV heads that recalled the needle")
    parser.add_argument("--ranks", action="store_true",
                        help="diagnostics (with --trace): per layer, the needle block's rank by several scoring rules "
                             "at the prompt's last forward (BlockRanks)")
    parser.add_argument("--oracle", nargs="*", metavar="FIRST:LAST",
                        help="diagnostics: also run each variant with the needle's blocks forced into the recall of "
                             "layers FIRST..LAST-1 (one run per range; no range = every layer): tells a selection "
                             "miss from a miss with the needle recalled, and which layers need it")
    parser.add_argument("--guide", nargs="*", metavar="FIRST:LAST",
                        help="diagnostics: run each variant with layers FIRST..LAST-1 choosing the blocks of every "
                             "other layer (RecallGuide; FIRST:LAST:all = of every layer, the guides too, from the "
                             "previous forward; FIRST:LAST:A-B = of layers A..B-1 only; one run per range, "
                             "instead of the unguided run; 'none' = the unguided run too)")
    parser.add_argument("--no-plain", action="store_true",
                        help="with --oracle: leave out the run without forcing (when it was measured before)")
    parser.add_argument("--last-steps", type=int, default=0,
                        help="feed the prompt's last N tokens one at a time, as decode steps (every run; "
                             "--guide runs whose followers include a layer before the last guide: at least 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model("smollm2-135m")
    stop = set(stop_token_ids(tokenizer))
    oracles = [None] if args.oracle is None else [None] + (args.oracle or [":"])
    if args.no_plain:
        if args.oracle is None:
            parser.error("--no-plain leaves out the unforced run of --oracle: give --oracle")
        oracles = oracles[1:]
    guides = [None if guide == "none" else guide for guide in args.guide or ["none"]]
    runs = [(variant, oracle, guide) for variant in args.variants for oracle in oracles for guide in guides]
    tally = {run_name(*run): 0 for run in runs}
    for haystack in args.haystacks.split(","):
        ids = tokenizer(load_text(haystack), add_special_tokens=False)["input_ids"]
        for depth in args.depths:
            for index in range(args.first_sample, args.first_sample + args.samples):
                sample = build_sample(SyntheticTaskConfig(task=args.task, haystack=haystack), tokenizer, ids,
                                      length=args.length, depth=depth, sample=index, seed=0,
                                      prompt_format=PromptFormat(tokenizer))
                start = sample.needle_prompt_start
                needle = (start, start + len(sample.needle.ids))
                span = needle if args.trace else None
                for variant, oracle, guide in runs:
                    began = time.time()
                    with cache_from_config(model, variant_config(variant)) as cache:
                        last_steps = args.last_steps
                        if oracle is not None:
                            force_needle_blocks(cache, *needle, slice(*[int(x) if x else None for x in oracle.split(":")]))
                        if guide is not None:
                            first, last, *follow = guide.split(":")
                            followers = (None if not follow else range(len(cache.layers)) if follow == ["all"]
                                         else range(*map(int, follow[0].split("-"))))
                            if layer_guide(cache, int(first), int(last), followers).needs_previous_forward:
                                last_steps = max(last_steps, 1)
                        ranks = BlockRanks(cache) if args.ranks else None
                        tokens, trace = answer(model, cache, sample.prompt_ids, 256, 8, stop, span,
                                               last_steps=last_steps, ranks=ranks)
                    text = tokenizer.decode(tokens)
                    right = sample.answers[0] in text
                    name = run_name(variant, oracle, guide)
                    tally[name] += right
                    print(f"{haystack.rsplit('/', 1)[-1]} depth={depth} sample={index} {name}: "
                          f"{'OK' if right else '--'} {text[:30]!r} {trace} ({time.time() - began:.0f}s)", flush=True)
    for variant, right in tally.items():
        print(f"{variant}: {right} right", flush=True)


if __name__ == "__main__":
    main()
