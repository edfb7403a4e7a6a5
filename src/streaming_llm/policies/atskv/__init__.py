"""ATSKV (seed 003): a trained token-relevance predictor, adaptive thresholds, eviction within a budget."""

from .config import ATSKVConfig
from .controller import ThresholdController
from .predictor import RelevancePredictor, resolve_predictor

__all__ = ["ATSKVConfig", "RelevancePredictor", "ThresholdController", "resolve_predictor"]
