"""LongBench and ZeroSCROLLS examples: loaded through HF ``datasets`` or from local JSON lines.

``load_longbench(task)`` reads ``THUDM/LongBench`` (config = task, split ``test``) and fills
LongBench's own prompt template (``config/dataset2prompt.json`` of the LongBench repository) with
each row's ``context`` and ``input``. ``load_zeroscrolls(task)`` reads ``tau/zero_scrolls``, whose
``input`` is already the whole prompt (instructions, document, query); only its ``validation``
split has answers.

``source`` may instead be a local folder or ``.jsonl`` file (LongBench's ``data.zip`` holds
``data/<task>.jsonl``; ZeroSCROLLS' ``<task>/<split>.jsonl``), which needs neither the hub nor
``datasets``. Offline without such files, loading raises ``OSError`` saying so.

``BENCHMARKS`` names both benchmarks (hub dataset, default split, tasks, loader), and
``BenchmarkConfig`` says which examples a run answers and how long prompts and answers may be.

Long examples are cut in the middle to ``max_length`` tokens, as LongBench's ``pred.py`` does,
so the question at the end and the instructions at the start survive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks import check_int
from .scoring import LONGBENCH_METRICS, ZEROSCROLLS_METRICS, longbench_score, zeroscrolls_score

LONGBENCH_DATASET = "THUDM/LongBench"
ZEROSCROLLS_DATASET = "tau/zero_scrolls"

#: LongBench's prompt templates for its English tasks (``{context}`` and ``{input}`` filled per row).
LONGBENCH_PROMPTS: dict[str, str] = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

#: LongBench's answer budgets (``config/dataset2maxlen.json``), in generated tokens.
LONGBENCH_MAX_NEW_TOKENS: dict[str, int] = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32, "musique": 32,
    "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32, "samsum": 128,
    "passage_count": 32, "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64,
}

#: LongBench's few-shot and code tasks are not chat prompts; its pred.py leaves them unwrapped.
LONGBENCH_NO_CHAT = ("trec", "triviaqa", "samsum", "lcc", "repobench-p")

ZEROSCROLLS_MAX_NEW_TOKENS: dict[str, int] = {
    "gov_report": 1024, "summ_screen_fd": 512, "qmsum": 512, "squality": 512, "qasper": 128,
    "narrative_qa": 64, "quality": 10, "musique": 32, "space_digest": 36, "book_sum_sort": 256,
}


@dataclass(frozen=True)
class BenchmarkExample:
    """One example: the whole user prompt, the reference answers, and how to score a prediction."""

    benchmark: str  # "longbench" or "zeroscrolls"
    task: str
    id: str
    prompt: str
    answers: tuple[str, ...]
    all_classes: tuple[str, ...] = ()
    max_new_tokens: int = 32
    use_chat_template: bool = True

    def score(self, prediction: str) -> float:
        if self.benchmark == "longbench":
            return longbench_score(self.task, prediction, self.answers, self.all_classes)
        return zeroscrolls_score(self.task, prediction, self.answers)

    @property
    def metric(self) -> str:
        """Name of the metric ``score`` uses, e.g. ``qa_f1``, ``rouge_l``, ``concordance``."""
        metrics = LONGBENCH_METRICS if self.benchmark == "longbench" else ZEROSCROLLS_METRICS
        return metrics[self.task].__name__.removeprefix("zs_").removesuffix("_score")


def longbench_example(task: str, row: dict[str, Any]) -> BenchmarkExample:
    """A LongBench row (``input, context, answers, all_classes, _id``) as an example."""
    if task not in LONGBENCH_PROMPTS:
        raise ValueError(f"LongBench task must be one of {', '.join(LONGBENCH_PROMPTS)}; got {task!r}")
    _require_fields("LongBench", task, row, ("input", "context", "answers"))
    prompt = LONGBENCH_PROMPTS[task].format(context=row["context"], input=row["input"])
    return BenchmarkExample(
        "longbench", task, str(row.get("_id", "")), prompt, tuple(row["answers"]),
        tuple(row.get("all_classes") or ()), LONGBENCH_MAX_NEW_TOKENS[task], task not in LONGBENCH_NO_CHAT,
    )


def zeroscrolls_example(task: str, row: dict[str, Any]) -> BenchmarkExample:
    """A ZeroSCROLLS row (``id, input, output``) as an example; ``output`` is None on ``test``."""
    if task not in ZEROSCROLLS_METRICS:
        raise ValueError(f"ZeroSCROLLS task must be one of {', '.join(ZEROSCROLLS_METRICS)}; got {task!r}")
    _require_fields("ZeroSCROLLS", task, row, ("input",))
    output = row.get("output")
    answers = tuple(output) if isinstance(output, list) else (() if output is None else (output,))
    return BenchmarkExample("zeroscrolls", task, str(row.get("id", "")), row["input"], answers,
                            max_new_tokens=ZEROSCROLLS_MAX_NEW_TOKENS[task])


def _require_fields(benchmark: str, task: str, row: dict[str, Any], fields: Sequence[str]) -> None:
    missing = [field for field in fields if field not in row]
    if missing:
        raise ValueError(
            f"{benchmark} {task} row {row.get('_id', row.get('id', '?'))!r} lacks {', '.join(missing)}; "
            f"each row needs the fields {', '.join(fields)}"
        )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; a line that is not one is an error naming the file and line."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}); expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line, got a {type(row).__name__}")
            rows.append(row)
    return rows


def _is_hub_id(source: str) -> bool:
    # Hub dataset ids are NAME or OWNER/NAME; a source that cannot be one is a local path, so a
    # missing one is reported as missing instead of being looked up on the hub.
    return not (source.startswith(("/", ".", "~")) or source.endswith((".jsonl", ".json")) or source.count("/") > 1)


def _local_rows(source: str, candidates: Sequence[str]) -> list[dict[str, Any]] | None:
    path = Path(source).expanduser()
    if path.is_file():
        return _read_jsonl(path)
    if path.is_dir():
        for candidate in candidates:
            if (path / candidate).is_file():
                return _read_jsonl(path / candidate)
        raise FileNotFoundError(f"none of {', '.join(candidates)} in {source}")
    if not _is_hub_id(source):
        raise FileNotFoundError(f"no such file or folder: {source} (a local source is a folder of the "
                                "benchmark's .jsonl files or one .jsonl file)")
    return None


def _hub_rows(dataset: str, config: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"loading {dataset} from the Hugging Face hub needs the extra: pip install 'streaming_llm[datasets]' "
            "(or pass a local folder of .jsonl files as the source)"
        ) from None
    try:
        return list(datasets.load_dataset(dataset, config, split=split))
    except Exception as error:  # datasets raises many types (ConnectionError, HfHubHTTPError, ...)
        raise OSError(
            f"could not load {dataset!r} (config {config!r}, split {split!r}): the Hugging Face hub is unreachable, "
            f"has no such dataset, or this datasets version cannot read it ({error.__class__.__name__}: {error}). "
            "Offline, pass a local folder of the benchmark's .jsonl files as the source."
        ) from error


def _load(task: str, source: str, split: str, candidates: Sequence[str],
          make: Callable[[str, dict[str, Any]], BenchmarkExample], num_samples: int | None) -> list[BenchmarkExample]:
    check_int("num_samples", num_samples, 1, optional=True)
    rows = _local_rows(source, candidates)
    if rows is None:
        rows = _hub_rows(source, task, split)
    return [make(task, row) for row in rows[:num_samples]]


def load_longbench(task: str, source: str = LONGBENCH_DATASET, split: str = "test",
                   num_samples: int | None = None) -> list[BenchmarkExample]:
    """LongBench ``task`` (English tasks; see ``LONGBENCH_PROMPTS``) from the hub or a local folder."""
    if task not in LONGBENCH_METRICS:
        raise ValueError(f"LongBench task must be one of {', '.join(LONGBENCH_METRICS)}; got {task!r}")
    return _load(task, source, split, (f"{task}.jsonl", f"data/{task}.jsonl"), longbench_example, num_samples)


def load_zeroscrolls(task: str, source: str = ZEROSCROLLS_DATASET, split: str = "validation",
                     num_samples: int | None = None) -> list[BenchmarkExample]:
    """ZeroSCROLLS ``task`` from the hub or a local folder; only ``validation`` has answers."""
    if task not in ZEROSCROLLS_METRICS:
        raise ValueError(f"ZeroSCROLLS task must be one of {', '.join(ZEROSCROLLS_METRICS)}; got {task!r}")
    return _load(task, source, split, (f"{task}/{split}.jsonl", f"{task}.jsonl"), zeroscrolls_example, num_samples)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its hub dataset, the split that has answers, its (English) tasks, its loader."""

    name: str
    dataset: str
    split: str
    tasks: tuple[str, ...]
    load: Callable[..., list[BenchmarkExample]]


BENCHMARKS: dict[str, Benchmark] = {
    "longbench": Benchmark("longbench", LONGBENCH_DATASET, "test", tuple(LONGBENCH_PROMPTS), load_longbench),
    "zeroscrolls": Benchmark("zeroscrolls", ZEROSCROLLS_DATASET, "validation", tuple(ZEROSCROLLS_METRICS),
                             load_zeroscrolls),
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which examples a run answers, and how long their prompts and answers may be.

    ``benchmark``: a key of ``BENCHMARKS``. ``tasks``: some of its tasks.
    ``source``: hub id, local folder or ``.jsonl`` file (None: the benchmark's hub dataset).
    ``split``: None for the benchmark's split with answers. ``num_samples``: first N per task (None: all).
    ``max_length``: prompt tokens at most, cut in the middle. ``max_new_tokens``: answer tokens at
    most for every task (None: each task's own budget, as LongBench and ZeroSCROLLS set them).
    """

    benchmark: str = "longbench"
    tasks: tuple[str, ...] = ("hotpotqa",)
    source: str | None = None
    split: str | None = None
    num_samples: int | None = None
    max_length: int = 4096
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}; got {self.benchmark!r}")
        unknown = [task for task in self.tasks if task not in self.spec.tasks]
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be {self.benchmark} tasks ({', '.join(self.spec.tasks)}); "
                             f"got {', '.join(map(repr, unknown)) or 'none'}")
        if self.source is not None and Path(self.source).expanduser().is_file() and len(self.tasks) > 1:
            raise ValueError(f"source {self.source} is one .jsonl file, which holds one task; "
                             "pass the folder to run several tasks")
        check_int("max_length", self.max_length, 1)
        for name in ("num_samples", "max_new_tokens"):
            check_int(name, getattr(self, name), 1, optional=True)

    @property
    def spec(self) -> Benchmark:
        return BENCHMARKS[self.benchmark]

    @property
    def resolved_source(self) -> str:
        return self.source or self.spec.dataset

    @property
    def resolved_split(self) -> str:
        return self.split or self.spec.split

    def load(self, task: str) -> list[BenchmarkExample]:
        return self.spec.load(task, self.resolved_source, self.resolved_split, self.num_samples)

    def new_tokens(self, example: BenchmarkExample) -> int:
        return self.max_new_tokens or example.max_new_tokens


def truncate_middle(ids: Sequence[int], max_length: int) -> list[int]:
    """``ids`` cut to ``max_length`` by dropping the middle (LongBench's truncation)."""
    if len(ids) <= max_length:
        return list(ids)
    half = max_length // 2
    return list(ids[:half]) + list(ids[len(ids) - (max_length - half):])


def encode_example(tokenizer, example: BenchmarkExample, max_length: int) -> list[int]:
    """Prompt ids of ``example``, at most ``max_length`` tokens: the user prompt cut in the middle,
    then wrapped in the chat template for tasks LongBench runs as chats."""
    from .prompting import PromptFormat

    chat = example.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    prefix, suffix = PromptFormat(tokenizer, use_chat_template=chat).wrap()
    body = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    return prefix + truncate_middle(body, max(1, max_length - len(prefix) - len(suffix))) + suffix
