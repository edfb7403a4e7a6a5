"""Compressors of ADMS's mid-memory tier (``compressor_type``): low_rank, vq, summary, custom."""

from .base import Compressor, PointSet
from .custom import CustomCompressor
from .low_rank import LowRankCompressor, low_rank_approximation
from .summary import SummaryCompressor
from .vq import VQCompressor, kmeans_assignment

__all__ = [
    "Compressor", "CustomCompressor", "LowRankCompressor", "PointSet", "SummaryCompressor", "VQCompressor",
    "kmeans_assignment", "low_rank_approximation",
]
