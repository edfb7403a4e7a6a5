"""Synthetic long-context tasks built from the shipped books, seeded and token-exact.

Four tasks, after the passkey test (Mohtashami & Jaggi 2023) and RULER (Hsieh et al. 2024):

- ``passkey``: one passkey sentence hidden in book text; asked at the end.
- ``needle``: one "special magic number for <word>" sentence (RULER's single needle).
- ``multikey``: ``num_keys`` such sentences with different words; one of them is asked.
- ``vartrack``: a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of ``num_hops + 1``
  assignments; the answer is every variable that ends up holding the value (RULER's variable
  tracking, one chain).

The prompt is ``length`` tokens in all (frame + context). The asked needle's first token sits
at ``round(depth * (context_length - needle_length))`` tokens into the context (for
``vartrack``, ``needle_length`` is the whole chain's, so the chain fits after its first
assignment and depth 1 puts it all at the end): the context is
built as ids (haystack ids + needle ids + haystack ids) and never re-tokenised, so the position
is exact. Distractor needles (``multikey``) and the later assignments (``vartrack``) are placed
by a second random stream so the asked needle's position is the one that varies with ``depth``.

Randomness: what a sample *says* (keys, values, where in the book the haystack starts) depends
on ``(seed, task, sample)`` only, so the same sample at every length and depth asks the same
thing over the same text; only the layout depends on length and depth.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..checks import check_fraction, check_int
from .prompting import Prompt, PromptFormat, PromptParts

TASK_NAMES = ("passkey", "needle", "multikey", "vartrack")

# Keys for the needle tasks: short, common, single-token-ish English words, so a small model can
# copy the key from the question to the needle.
KEY_WORDS = (
    "apple", "river", "garden", "window", "candle", "forest", "mirror", "silver", "harbor", "pencil",
    "thunder", "blanket", "violin", "lantern", "meadow", "island", "rocket", "basket", "dragon", "ticket",
    "orange", "castle", "marble", "pepper", "falcon", "button", "jacket", "mountain", "rabbit", "compass",
    "anchor", "bicycle", "cactus", "diamond", "feather", "glacier", "hammer", "kettle", "ladder", "magnet",
    "needle", "oyster", "pillow", "quartz", "saddle", "tunnel", "umbrella", "velvet", "walnut", "zebra",
)


@dataclass(frozen=True)
class SyntheticTaskConfig:
    """What one synthetic task generates (not where: lengths and depths are per sample).

    ``task``: one of ``passkey``, ``needle``, ``multikey``, ``vartrack``.
    ``haystack``: the filler text, ``builtin:NAME`` or a file (see :func:`streaming_llm.data.load_text`).
    ``num_keys``: needles in a ``multikey`` context (one asked), >= 2.
    ``num_hops``: assignments after the first in ``vartrack``, >= 1.
    ``value_digits``: digits of the numbers to retrieve, 2 to 12.
    """

    task: str = "passkey"
    haystack: str = "builtin:pioneer-days"
    # RULER uses 4 keys and 4 hops; SmolLM2-135M with a full cache is near chance there (see
    # the README), so the defaults are the smallest versions that still test the skill.
    num_keys: int = 2
    num_hops: int = 2
    value_digits: int = 5

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}; got {self.task!r}")
        if not isinstance(self.haystack, str) or not self.haystack:
            raise ValueError(f"haystack must be a file path or builtin:NAME; got {self.haystack!r}")
        for name, minimum, maximum in (("num_keys", 2, len(KEY_WORDS)), ("num_hops", 1, 64), ("value_digits", 2, 12)):
            check_int(name, getattr(self, name), minimum, maximum)


@dataclass(frozen=True)
class TaskContent:
    """What a sample says: the question frame, the expected answers, and the needle sentences
    (``needles[0]`` is the one placed at the requested depth)."""

    parts: PromptParts
    answers: tuple[str, ...]
    needles: tuple[str, ...]
    chain: bool = False  # needles[1:] must come after needles[0], in order
    key: str | None = None  # the word the question asks about (needle, multikey); None where it names none


@dataclass(frozen=True)
class Snippet:
    text: str
    ids: tuple[int, ...]
    start: int  # index of its first token in the context

    @property
    def end(self) -> int:
        return self.start + len(self.ids)


@dataclass(frozen=True)
class TaskSample:
    """One prompt of a synthetic task, with everything needed to score and to check it."""

    task: str
    length: int
    depth: float
    sample: int
    seed: int
    parts: PromptParts
    answers: tuple[str, ...]
    prompt: Prompt
    snippets: tuple[Snippet, ...]  # snippets[0] is the asked needle
    haystack_offset: int  # first haystack token used, as an index into the haystack ids
    depth_tokens: int  # the needle length in the depth formula (vartrack: the whole chain's tokens)
    key: str | None = None  # TaskContent.key: lets an analysis find the asked word's other mentions

    @property
    def prompt_ids(self) -> list[int]:
        return self.prompt.ids

    @property
    def needle(self) -> Snippet:
        return self.snippets[0]

    @property
    def needle_start(self) -> int:
        """Index of the asked needle's first token in the context."""
        return self.snippets[0].start

    @property
    def needle_prompt_start(self) -> int:
        """Index of the asked needle's first token in the prompt."""
        return self.prompt.context_start + self.snippets[0].start


# -- what each task says -------------------------------------------------------------------------

def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _passkey(rng: random.Random, config: SyntheticTaskConfig) -> TaskContent:
    key = _number(rng, config.value_digits)
    # What lets SmolLM2-135M-Instruct answer with the full context: the answer prefix (without
    # it the model talks about the book), and "Answer with the number only." (without it, a
    # passkey at depth 0 right after the instruction was described, not quoted: 0 of 2 at 2k).
    return TaskContent(
        PromptParts(
            instruction="There is a passkey hidden inside a lot of irrelevant text. Find it and memorize it.",
            question="What is the passkey? Answer with the number only.",
            answer_prefix="The passkey is",
        ),
        answers=(key,),
        needles=(f"\nThe secret passkey is {key}. Remember it. {key} is the passkey.\n",),
    )


def _magic_number_needle(word: str, value: str) -> str:
    return f"\nOne of the special magic numbers for {word} is: {value}.\n"


def _needle(rng: random.Random, config: SyntheticTaskConfig) -> TaskContent:
    word, value = rng.choice(KEY_WORDS), _number(rng, config.value_digits)
    return TaskContent(
        PromptParts(
            instruction="A special magic number is hidden inside a lot of irrelevant text. Find it and memorize it.",
            question=f"What is the special magic number for {word} mentioned in the provided text?",
            answer_prefix=f"The special magic number for {word} mentioned in the provided text is",
        ),
        answers=(value,),
        needles=(_magic_number_needle(word, value),),
        key=word,
    )


def _multikey(rng: random.Random, config: SyntheticTaskConfig) -> TaskContent:
    words = rng.sample(KEY_WORDS, config.num_keys)
    values = [_number(rng, config.value_digits) for _ in words]
    return TaskContent(
        PromptParts(
            instruction="Some special magic numbers are hidden inside a lot of irrelevant text. Find them and memorize them.",
            question=f"What is the special magic number for {words[0]} mentioned in the provided text?",
            answer_prefix=f"The special magic number for {words[0]} mentioned in the provided text is",
        ),
        answers=(values[0],),
        needles=tuple(_magic_number_needle(w, v) for w, v in zip(words, values)),
        key=words[0],
    )


def _variable_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def _vartrack(rng: random.Random, config: SyntheticTaskConfig) -> TaskContent:
    names: list[str] = []
    while len(names) < config.num_hops + 1:
        name = _variable_name(rng)
        if name not in names:
            names.append(name)
    value = _number(rng, config.value_digits)
    statements = [f"\nVAR {names[0]} = {value}.\n"]
    statements += [f"\nVAR {name} = VAR {previous}.\n" for previous, name in zip(names, names[1:])]
    return TaskContent(
        PromptParts(
            instruction="Memorize and track the chain of variable assignments hidden in the following text.",
            # Ending the prefix with "VAR" makes the model list names; after "they are:" alone
            # SmolLM2-135M listed things from the book (recall ~0.1 with a full cache at 2k).
            question=f"Find all variables that are assigned the value {value} in the text above. "
                     "Answer with the variable names only.",
            answer_prefix=(
                f"According to the chain of variable assignments in the text above, {len(names)} variables "
                f"are assigned the value {value}, they are: VAR"
            ),
        ),
        answers=tuple(names),
        needles=tuple(statements),
        chain=True,
    )


GENERATORS: dict[str, Callable[[random.Random, SyntheticTaskConfig], TaskContent]] = {
    "passkey": _passkey,
    "needle": _needle,
    "multikey": _multikey,
    "vartrack": _vartrack,
}


# -- where it goes ---------------------------------------------------------------------------------

def needle_start_for_depth(depth: float, context_length: int, needle_length: int) -> int:
    """First token of a needle at ``depth`` (0 = start of the context, 1 = its end)."""
    return round(depth * (context_length - needle_length))


def _layout(lengths: Sequence[int], first_start: int, context_length: int, chain: bool,
            rng: random.Random) -> list[int]:
    """Start of every snippet: the first at ``first_start``, the others without overlap."""
    starts = [first_start]
    if chain:
        # The later assignments go after the first, in order, at uniformly random gaps.
        first_end = first_start + lengths[0]
        free = context_length - first_end - sum(lengths[1:])
        if free < 0:
            raise ValueError("the context is too short for the chain after the requested depth")
        offset = first_end
        for gap_point, prev_gap, length in zip(*_gaps(rng, free, len(lengths) - 1), lengths[1:]):
            offset += gap_point - prev_gap
            starts.append(offset)
            offset += length
        return starts
    taken = [(first_start, first_start + lengths[0])]
    for length in lengths[1:]:
        for _ in range(10_000):
            start = rng.randint(0, context_length - length)
            if all(start + length <= a or start >= b for a, b in taken):
                break
        else:
            raise ValueError(f"could not place {len(lengths)} needles without overlap in {context_length} tokens")
        taken.append((start, start + length))
        starts.append(start)
    return starts


def _gaps(rng: random.Random, free: int, count: int) -> tuple[list[int], list[int]]:
    points = sorted(rng.randint(0, free) for _ in range(count))
    return points, [0] + points[:-1]


def _fill(haystack: Sequence[int], snippets: Sequence[tuple[int, list[int]]], context_length: int) -> list[int]:
    """Context of ``context_length`` ids: consecutive haystack ids with each snippet at its start."""
    context: list[int] = []
    source = 0
    for start, ids in sorted(snippets):
        take = start - len(context)
        context.extend(haystack[source : source + take])
        source += take
        context.extend(ids)
    context.extend(haystack[source : source + context_length - len(context)])
    return context


def build_sample(
    config: SyntheticTaskConfig,
    tokenizer,
    haystack_ids: Sequence[int],
    *,
    length: int,
    depth: float,
    sample: int = 0,
    seed: int = 0,
    prompt_format: PromptFormat | None = None,
) -> TaskSample:
    """One prompt of ``length`` tokens with the asked needle at ``depth`` of its context."""
    check_int("length", length, 1)
    check_fraction("depth", depth)
    check_int("sample", sample, 0)
    content_rng = random.Random(f"{seed}:{config.task}:{sample}")
    haystack_fraction = content_rng.random()  # drawn first: where the text starts is part of the content
    content = GENERATORS[config.task](content_rng, config)
    fmt = prompt_format or PromptFormat(tokenizer)
    needle_ids = [tokenizer(n, add_special_tokens=False)["input_ids"] for n in content.needles]
    context_length = length - fmt.frame_length(content.parts)
    filler_length = context_length - sum(map(len, needle_ids))
    if filler_length < 0:
        raise ValueError(
            f"length {length} is too short for task {config.task!r}: its frame takes "
            f"{length - context_length} tokens and its needles {sum(map(len, needle_ids))}"
        )
    if filler_length > len(haystack_ids):
        raise ValueError(f"the haystack has {len(haystack_ids)} tokens; length {length} needs {filler_length}")
    offset = int(haystack_fraction * (len(haystack_ids) - filler_length))
    layout_rng = random.Random(f"{seed}:{config.task}:{sample}:{length}:{depth}")
    # A chain must fit after its first assignment, so its depth places the whole chain's tokens.
    depth_tokens = sum(map(len, needle_ids)) if content.chain else len(needle_ids[0])
    first = needle_start_for_depth(depth, context_length, depth_tokens)
    starts = _layout([len(ids) for ids in needle_ids], first, context_length, content.chain, layout_rng)
    context = _fill(haystack_ids[offset : offset + filler_length], list(zip(starts, needle_ids)), context_length)
    prompt = fmt.build(content.parts, context)
    snippets = tuple(Snippet(text, tuple(ids), start) for text, ids, start in zip(content.needles, needle_ids, starts))
    return TaskSample(config.task, length, float(depth), sample, seed, content.parts, content.answers, prompt,
                      snippets, offset, depth_tokens, key=content.key)
