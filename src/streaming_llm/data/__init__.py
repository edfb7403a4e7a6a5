"""Text sources: shipped books (``builtin:NAME``), any text file, and HF ``datasets`` when reachable."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

BUILTIN_PREFIX = "builtin:"

#: built-in corpus name -> files (in order) under ``streaming_llm/data/corpora``; see PROVENANCE.md there.
BUILTIN_CORPORA: dict[str, tuple[str, ...]] = {
    "pioneer-days": ("pg19-10146-pioneer-days.txt",),
    "dragons-blood": ("pg19-10321-dragons-blood.txt",),
    "travels-in-morocco": ("pg19-10356-travels-in-morocco.txt",),
}
BUILTIN_CORPORA["pg19"] = tuple(f for files in list(BUILTIN_CORPORA.values()) for f in files)

DEFAULT_TEXT = "builtin:pioneer-days"


def list_builtin_texts() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTIN_CORPORA]


def _normalise(text: str) -> str:
    # Gutenberg files use CRLF; "\r" would otherwise become tokens of its own.
    return text.replace("\r\n", "\n").lstrip("\n")


def load_text(source: str) -> str:
    """Text of ``builtin:NAME`` or of a UTF-8 file path."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_CORPORA:
            raise ValueError(f"text must be a file path or one of {', '.join(list_builtin_texts())}; got {source!r}")
        folder = resources.files("streaming_llm.data") / "corpora"
        return "\n\n".join(_normalise((folder / f).read_text(encoding="utf-8")) for f in BUILTIN_CORPORA[name])
    path = Path(source)
    if not path.is_file():
        raise ValueError(
            f"text must be a file path or one of {', '.join(list_builtin_texts())}; no such file: {source!r}"
        )
    text = _normalise(path.read_text(encoding="utf-8"))
    if not text.strip():
        raise ValueError(f"text {source!r} is empty")
    return text


def accumulate_until(token_streams: Iterable[list[int]], num_tokens: int, separator: list[int] = ()) -> list[int]:
    """Seed 000's ``--concat_stream``: join samples (with ``separator``) until ``num_tokens`` are reached."""
    joined: list[int] = []
    for ids in token_streams:
        if joined and separator:
            joined.extend(separator)
        joined.extend(ids)
        if len(joined) >= num_tokens:
            break
    return joined[:num_tokens]


def load_hf_texts(dataset_name: str, config: str | None = None, split: str = "test", num_samples: int | None = None):
    """Non-empty texts of a Hugging Face dataset (needs the ``datasets`` extra and a reachable hub)."""
    try:
        import datasets
    except ImportError:
        raise ImportError("HF datasets need the extra: pip install 'streaming_llm[datasets]'") from None
    try:
        data = datasets.load_dataset(dataset_name, config, split=split)
    except Exception as error:  # datasets raises many types (ConnectionError, HfHubHTTPError, ...)
        raise OSError(
            f"could not load dataset {dataset_name!r} (config {config!r}, split {split!r}): the Hugging Face hub "
            f"is unreachable or has no such dataset ({error.__class__.__name__}: {error}). "
            f"Offline, use --text with a file or one of {', '.join(list_builtin_texts())}"
        ) from error
    column = "text" if "text" in data.column_names else data.column_names[0]
    texts = (row[column] for row in data)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    return texts[:num_samples] if num_samples else texts


def tokenize_stream(
    tokenizer,
    *,
    text: str | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    num_samples: int | None = None,
    num_tokens: int,
    concat_stream: bool = True,
) -> list[int]:
    """Token ids of one evaluation stream of (at most) ``num_tokens`` tokens.

    A text (built-in or file) is tokenised whole and cut. A dataset's samples are joined until
    ``num_tokens`` is reached when ``concat_stream`` (seed 000); otherwise only the first sample
    is used (cut to ``num_tokens``).
    """
    if (text is None) == (dataset_name is None):
        raise ValueError("give exactly one of text (file path or builtin:NAME) and dataset_name")
    if text is not None:
        return tokenizer(load_text(text), add_special_tokens=False)["input_ids"][:num_tokens]
    samples = load_hf_texts(dataset_name, dataset_config, split, num_samples)
    streams = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in samples)
    if not concat_stream:
        return next(iter(streams), [])[:num_tokens]
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    return accumulate_until(streams, num_tokens, separator)
