"""One run store for every command: job ids, atomic records, validation, resume."""

from .atomic import replacing, write_atomic, write_json
from .store import RecordError, RunStore, job_key, read_record

__all__ = ["RecordError", "RunStore", "job_key", "read_record", "replacing", "write_atomic", "write_json"]
