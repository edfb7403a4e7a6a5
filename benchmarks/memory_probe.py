"""Probe (issue 16): which memory summaries let SmolLM2 answer a passkey whose needle was evicted.

For each haystack and depth (one passkey prompt each, seed 0), streaming 4+252 plus 4 recalled
blocks of 64 tokens with each memory variant; prints whether the answer holds the passkey. Used to
pick the default summary on a text that no report uses (WikiText-2), before the shipped books:

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/memory_probe.py 4096 \\
        /work/shared/data/wikitext-2-raw/wiki.test.raw summary=representative summary=minmax \\
        summary=quantized,summary_bits=2 summary=quantized,summary_bits=4 summary=quantized,summary_bits=8

Arguments: LENGTH HAYSTACK[,HAYSTACK...] VARIANT... where a VARIANT is ``KEY=VALUE,...`` of
:class:`streaming_llm.memory.MemoryConfig` (block_size 64 and recall_blocks 4 unless given).
"""

import sys
import time

import torch

from streaming_llm.api import cache_from_config
from streaming_llm.data import load_text
from streaming_llm.evaluation.runs import RunSpec
from streaming_llm.models import load_model
from streaming_llm.tasks.prompting import PromptFormat
from streaming_llm.tasks.runner import DecodeConfig, greedy_generate, stop_token_ids
from streaming_llm.tasks.synthetic import SyntheticTaskConfig, build_sample


def variant_config(text: str):
    """``KEY=VALUE,...`` memory parameters -> the streaming 4+252 + memory config."""
    memory = {"block_size": "64", "recall_blocks": "4"}
    memory.update(item.split("=", 1) for item in filter(None, text.split(",")))
    params = ",".join(f"memory_{key}={value}" for key, value in memory.items())
    return RunSpec.parse(f"streaming+memory:start_size=4,recent_size=252,{params}").config()


def main() -> None:
    torch.set_num_threads(1)
    length, haystacks, variants = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
    model, tokenizer = load_model("smollm2-135m")
    for haystack in haystacks:
        ids = tokenizer(load_text(haystack), add_special_tokens=False)["input_ids"]
        for depth in (0.25, 0.5, 0.75):
            sample = build_sample(SyntheticTaskConfig(task="passkey", haystack=haystack), tokenizer, ids, length=length,
                                  depth=depth, sample=0, seed=0, prompt_format=PromptFormat(tokenizer))
            for variant in variants:
                start = time.time()
                cache = cache_from_config(model, variant_config(variant))
                out = greedy_generate(model, cache, sample.prompt_ids, DecodeConfig(256, 8), stop_token_ids(tokenizer))
                cache.disable()
                answer = tokenizer.decode(out.tokens)
                verdict = "OK" if sample.answers[0] in answer else "--"
                print(f"{haystack.rsplit('/', 1)[-1]} depth={depth} {variant}: {verdict} {answer[:30]!r} "
                      f"({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
