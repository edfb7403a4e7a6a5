"""Distributed sweeps: every run is a Ray task (``pip install 'streaming_llm[ray]'``).

``RayExecutor()`` starts a local Ray instance; ``RayExecutor(address="ray://host:10001")`` or
``address="auto"`` joins an existing cluster. A task asks for one GPU when the driver sees CUDA
(so tasks spread over the cluster's GPUs) and one CPU otherwise. The driver writes each record
as its task finishes, exactly as the local executor does, so resuming works the same way.
Workers run the same ``unit.execute`` as the local path (eval jobs, task cells, benchmark
examples: :mod:`streaming_llm.runs.executors`), so the records match it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..evaluation.jobs import Workspace
from ..runs.executors import OnFailure, OnRecord, Unit, describe_error

log = logging.getLogger("streaming_llm")

# One workspace per Ray worker process: Ray reuses workers between tasks, so a worker that runs
# several jobs on one model loads it once. It lives only in worker processes.
_worker_workspace: Workspace | None = None


def _run_in_worker(job: Unit) -> dict[str, Any]:
    global _worker_workspace
    if _worker_workspace is None:
        _worker_workspace = Workspace()
    return job.execute(_worker_workspace, progress=False)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("distributed sweeps need Ray: pip install 'streaming_llm[ray]'") from None
    return ray


class RayExecutor:
    def __init__(self, address: str | None = None, num_cpus: int | None = None, gpus_per_task: float | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.gpus_per_task = (1.0 if torch.cuda.is_available() else 0.0) if gpus_per_task is None else gpus_per_task

    def run(self, jobs: list[Unit], on_record: OnRecord, on_failure: OnFailure, progress: bool) -> None:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            options: dict[str, Any] = {"address": self.address, "include_dashboard": False,
                                       "log_to_driver": progress, "logging_level": logging.WARNING}
            if self.address is None:
                # Local workers import the driver's copy of the package (a source tree on
                # PYTHONPATH, a worktree), not whichever one the environment installs: the units
                # they unpickle are defined there.
                package_root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
                options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
                if self.num_cpus is not None:
                    options["num_cpus"] = self.num_cpus
            ray.init(**options)
        try:
            remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_task)(_run_in_worker)
            futures = {remote.remote(job): job for job in jobs}
            log.info("ray: %d task(s) submitted", len(futures))
            waiting = list(futures)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                job = futures[done[0]]
                try:
                    record = ray.get(done[0])
                except Exception as error:  # RayTaskError wraps the worker's exception
                    cause = getattr(error, "cause", None) or error
                    on_failure(job, describe_error(cause))
                else:
                    on_record(job, record)
        finally:
            if started_here:
                ray.shutdown()
