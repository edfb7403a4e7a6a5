"""Sweeps: a grid of scenarios x profiles (TOML/YAML), run locally or on Ray, resumable."""

from .grid import Grid, Profile, Scenario, jobs_for, load_grid
from .runner import LocalExecutor, SweepOutcome, run_sweep

__all__ = ["Grid", "LocalExecutor", "Profile", "Scenario", "SweepOutcome", "jobs_for", "load_grid", "run_sweep"]
