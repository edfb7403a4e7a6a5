"""How often each needle cell's key word occurs in its haystack, beside the answers its records hold.

The needle asks "What is the special magic number for <word>?". When the book itself uses <word>
elsewhere in the context (dragons-blood has oranges), those mentions compete with the needle for
the question's attention: a recall tier that scores blocks by the question's queries can pick a
block that mentions the word but holds no number, and the model may answer the word itself
('"Orange."'). This script rebuilds every prompt the records under a results folder answered
(same config, seed, sample, length and depth, so the same ids), counts the mentions of the key word
outside the needle, and tabulates them next to each policy's score.

    PYTHONPATH=src .venv/bin/python benchmarks/needle_distractors.py docs/results/memory \\
        --output docs/results/memory/needle-distractors.md
"""

import argparse
import re
from collections import defaultdict
from pathlib import Path

from memory_report import read_records  # one record per cell and label, the newest
from streaming_llm.data import load_text
from streaming_llm.models import load_model
from streaming_llm.report import write_atomic
from streaming_llm.tasks import PromptFormat, SyntheticTaskConfig, build_sample


def key_word_mentions(sample, tokenizer) -> int:
    """Mentions of the asked key word (as a word start: "orange", "oranges", "orange-trees") in the
    context outside the needle sentence."""
    word = sample.key
    start, end = sample.prompt.context_start, sample.prompt.context_end
    ids = sample.prompt_ids
    needle_start, needle_end = start + sample.needle.start, start + sample.needle.end
    text = tokenizer.decode(ids[start:needle_start]) + " " + tokenizer.decode(ids[needle_end:end])
    return len(re.findall(rf"\b{re.escape(word)}", text, flags=re.IGNORECASE))


def cell_key(record: dict) -> tuple:
    return (record["task_config"]["haystack"], record["length"], record["depth"], record["sample"], record["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a results folder holding <cell>/records/*.json")
    parser.add_argument("--output", type=Path, help="write the Markdown here (atomically) as well as printing it")
    args = parser.parse_args()
    records = [record for record in read_records(args.folder) if record.get("task") == "needle"]
    if not records:
        raise SystemExit(f"no needle records under {args.folder}")
    _, tokenizer = load_model("smollm2-135m")
    prompt_format = PromptFormat(tokenizer)
    haystacks: dict[str, list[int]] = {}
    scores: dict[tuple, dict[str, float]] = defaultdict(dict)
    configs: dict[tuple, dict] = {}
    needle_starts: dict[tuple, int] = {}
    for record in records:
        scores[cell_key(record)][record["label"]] = record["score"]
        configs[cell_key(record)] = record["task_config"]
        needle_starts[cell_key(record)] = record["needle_start"]
    policies = sorted({record["label"] for record in records})  # a variant (policy:params) is its own column
    rows, tally = [], defaultdict(lambda: [0.0, 0])  # (policy, mention bucket) -> [answered, cells]
    for key in sorted(scores):
        haystack, length, depth, sample_index, seed = key
        if haystack not in haystacks:
            haystacks[haystack] = tokenizer(load_text(haystack), add_special_tokens=False)["input_ids"]
        sample = build_sample(SyntheticTaskConfig(**configs[key]), tokenizer, haystacks[haystack], length=length,
                              depth=depth, sample=sample_index, seed=seed, prompt_format=prompt_format)
        if sample.needle_start != needle_starts[key]:  # the rebuilt prompt must be the one answered
            raise SystemExit(f"{key}: the rebuilt needle starts at {sample.needle_start}, "
                             f"the record says {needle_starts[key]}")
        mentions = key_word_mentions(sample, tokenizer)
        word = sample.key
        cells = []
        for policy in policies:
            score = scores[key].get(policy)
            cells.append("–" if score is None else f"{score:g}")
            if score is not None:
                bucket = tally[(policy, min(mentions, 2))]
                bucket[0] += score
                bucket[1] += 1
        rows.append(f"| {haystack.removeprefix('builtin:')} | {length} | {depth:g} | {sample_index} | {word} | "
                    f"{mentions} | " + " | ".join(cells) + " |")
    lines = [
        "# Needle cells: the key word's other mentions in the context",
        "",
        f"Command: `PYTHONPATH=src .venv/bin/python benchmarks/needle_distractors.py {args.folder}"
        + (f" --output {args.output}`" if args.output else "`"),
        "",
        "| book | length | depth | sample | key word | mentions outside the needle | "
        + " | ".join(policies) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(policies),
        *rows,
        "",
        "Answered, by how often the key word occurs elsewhere in the context:",
        "",
        "| policy | no other mention | one | two or more |",
        "|---|---|---|---|",
    ]
    for policy in policies:
        parts = []
        for bucket in (0, 1, 2):
            answered, cells = tally[(policy, bucket)]
            parts.append(f"{answered:g}/{cells}" if cells else "–")
        lines.append(f"| {policy} | " + " | ".join(parts) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        write_atomic(args.output, text)


if __name__ == "__main__":
    main()
