"""One JSON record per answered prompt, found again by what defines it.

A record's file name is a readable ``name`` plus a hash of its identity (policy, parameters,
prompt, model, settings), so a rerun with the same identity finds the record and skips the work,
and any changed setting gets a file of its own instead of reusing a stale answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..evaluation.runs import library_versions
from ..report import write_json


def record_path(output_dir: str | Path, identity: dict[str, Any], name: str) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(output_dir) / "records" / f"{name}-{digest}.json"


def load_or_run(path: Path, identity: dict[str, Any], run: Callable[[], dict[str, Any]],
                force: bool = False) -> tuple[dict[str, Any], bool]:
    """(record, ran): the record at ``path``, or ``identity`` + ``run()`` + library versions, written
    there atomically (an interrupted run leaves no half record to be mistaken for a finished one)."""
    if path.is_file() and not force:
        return json.loads(path.read_text()), False
    record = {**identity, **run(), "versions": library_versions()}
    write_json(path, record)
    return record, True
