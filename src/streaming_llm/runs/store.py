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

Migration: when the form of a definition changes (the key hashes only non-default parameters
since the twelfth session), a store given ``rekey`` re-files the records an older version wrote:
at the first key it does not find, each record whose stored definition now has another key is
saved under that key and its old file moved to ``superseded/``, so a resume reruns nothing that
was done (:meth:`RunStore.migrate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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


#: ``rekey(record)``: ``(key, record)`` as the current code files a stored record, or ``None``
#: when the record carries no definition to key it by.
Rekey = Callable[[dict[str, Any]], "tuple[str, dict[str, Any]] | None"]


class RunStore:
    """Records of one kind of unit in one folder, by key, checked for ``required`` fields;
    with ``rekey``, records filed under an older form of the key are re-filed (see the module)."""

    def __init__(self, folder: str | Path, required: Iterable[str] = (), rekey: Rekey | None = None):
        self.folder = Path(folder)
        self.required = tuple(required)
        self.rekey = rekey
        self._migrated = False

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        """The valid record of ``key``, or ``None`` when there is none (or it is damaged: warned, to be rerun)."""
        path = self.path(key)
        if not path.exists() and self.rekey is not None and not self._migrated:
            self.migrate()
        if not path.exists():
            return None
        try:
            return read_record(path, self.required)
        except RecordError as error:
            log.warning("%s; running it again", error)
            return None

    def save(self, key: str, record: dict[str, Any]) -> None:
        write_json(self.path(key), record)

    def migrate(self) -> int:
        """Re-file every valid record whose current key (``rekey``) is not its file name: saved
        under the current key (unless a record is there already: it was rerun since), then the old
        file moved to ``superseded/`` (kept, not deleted; out of the reports' ``*.json``). Returns
        the records re-filed."""
        self._migrated = True
        refiled = 0
        for path in sorted(self.folder.glob("*.json")) if self.rekey is not None else ():
            try:
                current = self.rekey(read_record(path, self.required))
            except RecordError:
                continue  # load() warns about it when its unit asks for it
            if current is None or current[0] == path.stem:
                continue
            key, record = current
            if not self.path(key).exists():
                self.save(key, record)
                refiled += 1
            superseded = self.folder / "superseded"
            superseded.mkdir(exist_ok=True)
            os.replace(path, superseded / path.name)
            log.info("record %s re-filed as %s (its old file is in %s)", path.name, self.path(key).name, superseded)
        return refiled

    def get_or_run(self, key: str, run: Callable[[], dict[str, Any]], force: bool = False) -> tuple[dict[str, Any], bool]:
        """(record, ran): the stored record of ``key`` (unless ``force``), else ``run()``'s, stored first."""
        record = None if force else self.load(key)
        if record is not None:
            log.info("%s: reusing %s (force to rerun)", key, self.path(key))
            return record, False
        record = run()
        self.save(key, record)
        return record, True
