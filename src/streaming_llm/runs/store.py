"""One run store for every command (eval, sweep, tasks, benchmark): one job id, one validator,
one resume rule.

A unit of work (an eval job, a task cell, a benchmark example) is plain data with a *definition*:
everything that determines its result. Its record lives at ``<folder>/<key>.json`` with
``key = job_key(name, definition)``, so a rerun with the same definition finds the record and
skips the work, and any changed setting gets a file of its own. Records are written atomically
the moment they exist, so a killed command loses only the units in flight.

Resume rule: a record that exists and is valid is reused (``force`` reruns it); a record that
cannot be read (truncated, not JSON, missing required fields: written by something else or
damaged by hand) is reported with a warning naming the file and run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .atomic import write_json

log = logging.getLogger("streaming_llm")


def job_key(name: str, definition: dict[str, Any]) -> str:
    """Stable id of a unit of work: ``NAME-<16 hex digits of the sha256 of its definition>``
    (JSON with sorted keys, so the order parameters were given in does not matter)."""
    blob = json.dumps(definition, sort_keys=True, default=str).encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}"


class RecordError(ValueError):
    """A record file that cannot be used; the message names the file."""


def read_record(path: str | Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """The record at ``path``: a JSON object holding every ``required`` key, else ``RecordError``."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"record {path} is unreadable ({error.__class__.__name__}: {error})") from None
    if not isinstance(record, dict):
        raise RecordError(f"record {path} is not a JSON object")
    missing = [k for k in required if k not in record]
    if missing:
        raise RecordError(f"record {path} lacks {', '.join(missing)}")
    return record


class RunStore:
    """Records of one kind of unit in one folder, by key, checked for ``required`` fields."""

    def __init__(self, folder: str | Path, required: Iterable[str] = ()):
        self.folder = Path(folder)
        self.required = tuple(required)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The valid record of ``key``, or ``None`` when there is none (or it is damaged: warned, to be rerun)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return read_record(path, self.required)
        except RecordError as error:
            log.warning("%s; running it again", error)
            return None

    def save(self, key: str, record: dict[str, Any]) -> None:
        write_json(self.path(key), record)

    def get_or_run(self, key: str, run: Callable[[], dict[str, Any]], force: bool = False) -> tuple[dict[str, Any], bool]:
        """(record, ran): the stored record of ``key`` (unless ``force``), else ``run()``'s, stored first."""
        record = None if force else self.load(key)
        if record is not None:
            log.info("%s: reusing %s (force to rerun)", key, self.path(key))
            return record, False
        record = run()
        self.save(key, record)
        return record, True
