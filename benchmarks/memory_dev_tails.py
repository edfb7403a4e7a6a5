"""Development haystacks for the memory tier (issue 16): each shipped book's tail, past every
haystack window a report reads, written to ``outputs/dev/<book>-tail.txt``.

The reported retrieval cells take their haystack from a window that the sample's seed places in
the book (seed 0, samples 0-2, lengths up to 32k: travels-in-morocco reads tokens 939..64,824 at
most, dragons-blood 1,098..70,284, pioneer-days 542..51,274) and the perplexity runs read the first
16,384 tokens. The tails below start past all of them, so a default can be chosen on the shipped
books' style without tuning it on the text a table reports.

    PYTHONPATH=src .venv/bin/python benchmarks/memory_dev_tails.py
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/memory_probe.py 8192 \\
        outputs/dev/travels-in-morocco-tail.txt summary=quantized --task needle --samples 3 --depths 0.1 0.3 0.5 0.7 0.9
"""

from pathlib import Path

from streaming_llm.data import load_text
from streaming_llm.models import load_model
from streaming_llm.report import write_atomic

TAIL_STARTS = {"travels-in-morocco": 65_000, "dragons-blood": 71_000, "pioneer-days": 52_000}  # first token


def main() -> None:
    _, tokenizer = load_model("smollm2-135m")
    out = Path("outputs/dev")
    out.mkdir(parents=True, exist_ok=True)
    for book, first in TAIL_STARTS.items():
        ids = tokenizer(load_text(f"builtin:{book}"), add_special_tokens=False)["input_ids"]
        write_atomic(out / f"{book}-tail.txt", tokenizer.decode(ids[first:]))
        print(f"{book}: tokens {first:,}..{len(ids):,} -> {out / f'{book}-tail.txt'}")


if __name__ == "__main__":
    main()
