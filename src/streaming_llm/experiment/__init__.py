"""Seed 003's experiment: KV cache methods x context sizes on synthetic tasks, LongBench and
ZeroSCROLLS, reporting memory usage, inference time, throughput and accuracy
(``streaming-llm experiment``, ``python -m streaming_llm.experiment``)."""

from .cli import add_experiment_parser

__all__ = ["add_experiment_parser"]
