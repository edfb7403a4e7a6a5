"""Running a sweep: plan the jobs, skip finished ones, execute the rest, write every record as
soon as it exists, then the reports.

Layout under the output root::

    runs/<job key>.json               one record per run, shared by profiles that run the same job
    <scenario>/<profile>/summary.json  + readable.txt, results.md, plots (seed 000's per-run files)
    report.md, report.csv, report.json, plots/   the aggregate over everything run so far
    failures.json                      runs that raised, with the error (retried next time)

A record is written atomically the moment its run ends, so a killed sweep loses at most the
runs in flight; the next invocation skips every job whose record exists (``force`` reruns).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.jobs import Job, eval_store
from ..report import write_json
from ..runs import RecordError, RunStore, read_record
from ..runs.executors import Executor, LocalExecutor, OnFailure, OnRecord, describe_error  # noqa: F401  (re-exported)
from ..report.comparison import write_aggregate_report, write_pair_report
from .grid import Grid, Profile, Scenario, jobs_for

log = logging.getLogger("streaming_llm")

@dataclass
class PairPlan:
    scenario: Scenario
    profile: Profile
    jobs: list[Job]

    def directory(self, root: Path) -> Path:
        return root / self.scenario.name / self.profile.name


@dataclass
class SweepOutcome:
    ran: int = 0
    reused: int = 0
    skipped_pairs: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # job key -> error
    report: Path | None = None


def plan(scenarios: Iterable[Scenario], profiles: Iterable[Profile]) -> list[PairPlan]:
    profiles = list(profiles)
    return [PairPlan(s, p, jobs_for(s, p)) for s in scenarios for p in profiles]


def record_path(root: Path, job: Job) -> Path:
    return eval_store(root / "runs").path(job.key)


def run_sweep(grid: Grid, output_root: str | Path, *, scenarios: list[str] | None = None,
              profiles: list[str] | None = None, extra_scenarios: list[Scenario] = (), force: bool = False,
              executor: Executor | None = None, progress: bool = True) -> SweepOutcome:
    """Run the selected scenarios x profiles of ``grid`` under ``output_root``."""
    root = Path(output_root)
    chosen_scenarios, chosen_profiles = grid.select(scenarios, profiles, list(extra_scenarios))
    pairs = plan(chosen_scenarios, chosen_profiles)
    outcome = SweepOutcome()
    store = eval_store(root / "runs")
    records: dict[str, dict[str, Any]] = {}
    pending: dict[str, Job] = {}
    for pair in pairs:
        existing = {job.key: None if force else store.load(job.key) for job in pair.jobs}
        if not force and (pair.directory(root) / "summary.json").is_file() and all(existing.values()):
            outcome.skipped_pairs += 1
        for job in pair.jobs:
            if existing[job.key] is not None:
                records[job.key] = existing[job.key]
            else:
                pending.setdefault(job.key, job)  # a job shared by two profiles runs once
    outcome.reused = len(records)
    log.info("sweep: %d pair(s), %d run(s) to do, %d reused from %s", len(pairs), len(pending), len(records), root)

    def on_record(job: Job, record: dict[str, Any]) -> None:
        store.save(job.key, record)
        records[job.key] = record
        outcome.ran += 1

    def on_failure(job: Job, error: str) -> None:
        log.error("run %s (%s) failed: %s", job.key, dict(job.labels), error)
        outcome.failures[job.key] = error

    if pending:
        (executor or LocalExecutor()).run(list(pending.values()), on_record, on_failure, progress)
    _write_failures(root, pending, outcome.failures)
    for pair in pairs:
        done = [records[j.key] for j in pair.jobs if j.key in records]
        failed = {j.spec.policy: outcome.failures[j.key] for j in pair.jobs if j.key in outcome.failures}
        if done:
            write_pair_report(pair.directory(root), done, pair.scenario, pair.profile, failed)
    outcome.report = write_aggregate_report(root, _all_pair_records(store, pairs, records), outcome.failures)
    return outcome


def _write_failures(root: Path, jobs: dict[str, Job], failures: dict[str, str]) -> None:
    entries = [{"job_key": k, "labels": dict(jobs[k].labels), "job": jobs[k].definition(), "error": e}
               for k, e in failures.items()]
    path = root / "failures.json"
    if entries or path.exists():
        write_json(path, entries)


def _all_pair_records(store: RunStore, pairs: list[PairPlan], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Records for the aggregate: this sweep's pairs plus pairs of earlier sweeps under ``root``,
    each labelled with its scenario and profile (a shared job appears once per pair)."""
    rows = []
    seen = set()
    for pair in pairs:
        for job in pair.jobs:
            if job.key in records:
                rows.append({**records[job.key], "labels": dict(job.labels)})
        seen.add((pair.scenario.name, pair.profile.name))
    for summary in sorted(store.folder.parent.glob("*/*/summary.json")):
        scenario, profile = summary.parent.parent.name, summary.parent.name
        if (scenario, profile) in seen:
            continue
        try:
            keys = read_record(summary, ("job_keys",))["job_keys"]
        except RecordError as error:
            log.warning("%s; left out of the aggregate report", error)
            continue
        for key in keys:
            record = store.load(key)
            if record is not None:
                rows.append({**record, "labels": {"scenario": scenario, "profile": profile}})
    return rows
