"""Long-context tasks: synthetic needle / passkey / multi-key / variable tracking built from the
shipped books, LongBench and ZeroSCROLLS loaders, their metrics, greedy answering with any
policy's cache, and reports (tables, figures). ``streaming-llm tasks`` runs the synthetic grid,
``streaming-llm benchmark`` LongBench or ZeroSCROLLS tasks.
"""

from .longbench import (
    BENCHMARKS,
    Benchmark,
    BenchmarkConfig,
    BenchmarkExample,
    encode_example,
    load_longbench,
    load_zeroscrolls,
)
from .prompting import Prompt, PromptFormat, PromptParts
from .runner import DecodeConfig, Generation, answer_prompt, greedy_generate, stop_token_ids
from .scoring import SYNTHETIC_SCORERS, contains_score, longbench_score, recall_score, zeroscrolls_score
from .synthetic import TASK_NAMES, SyntheticTaskConfig, TaskSample, build_sample

__all__ = [
    "BENCHMARKS", "Benchmark", "BenchmarkConfig", "BenchmarkExample", "DecodeConfig", "Generation", "Prompt",
    "PromptFormat", "PromptParts", "SYNTHETIC_SCORERS", "SyntheticTaskConfig", "TASK_NAMES", "TaskSample",
    "answer_prompt", "build_sample", "contains_score", "encode_example", "greedy_generate", "load_longbench",
    "load_zeroscrolls", "longbench_score", "recall_score", "stop_token_ids", "zeroscrolls_score",
]
