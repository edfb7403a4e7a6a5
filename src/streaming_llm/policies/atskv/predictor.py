"""The relevance predictor of seed 003: per layer ``l``, ``r = σ(wᵀ[h; a; f] + b)``.

A :class:`RelevancePredictor` holds, per layer, the logistic regression ``w`` ``(F,)`` and ``b``
over standardised features (``mean``/``std`` from the training data), the fixed projection of
``h`` and the tokenizer's token-type table. It is saved as ``NAME.pt`` (tensors, loaded with
``weights_only=True``) next to ``NAME.json``, the manifest: model, label, features, data, seed,
metrics. ``streaming-llm train-relevance`` writes both; the SmolLM2 pair ships in ``weights/``.

:meth:`RelevancePredictor.prior` is the untrained stand-in for models without trained weights
(and for tests on tiny models): it ranks slots by accumulated attention alone, like H2O.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ...runs.atomic import write_atomic
from .features import DYNAMIC_FEATURES, FEATURE_NAMES, NUM_FEATURES, STATIC_FEATURES, TOKEN_FLAGS

log = logging.getLogger("streaming_llm.atskv")

SHIPPED = "weights"  # folder of this package with the shipped predictors


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """What a predictor must match: the architecture's sizes (a predictor is per layer and per hidden size)."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    return {
        "model_type": getattr(config, "model_type", None),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "vocab_size": config.vocab_size,
    }


def pack_flags(flags: torch.Tensor) -> torch.Tensor:
    """``(V, 4)`` 0/1 -> ``(V,)`` uint8 bits (one byte a token keeps the shipped file small)."""
    bits = 2 ** torch.arange(flags.shape[1], dtype=torch.int64)
    return (flags.to(torch.int64) * bits).sum(dim=1).to(torch.uint8)


def unpack_flags(packed: torch.Tensor) -> torch.Tensor:
    bits = 2 ** torch.arange(len(TOKEN_FLAGS), dtype=torch.int64)
    return ((packed.to(torch.int64)[:, None] & bits) > 0).to(torch.uint8)


_STATIC_COLUMNS = torch.tensor([FEATURE_NAMES.index(name) for name in STATIC_FEATURES])
_DYNAMIC_COLUMNS = torch.tensor([FEATURE_NAMES.index(name) for name in DYNAMIC_FEATURES])


@dataclass
class RelevancePredictor:
    """Per-layer logistic regressions. Shapes: ``weight``/``mean``/``std`` ``(L, F)``, ``bias``
    ``(L,)``, ``projection`` ``(hidden, HIDDEN_DIMS)`` or ``None``, ``flags`` ``(V, 4)`` or ``None``."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    projection: torch.Tensor | None = None
    flags: torch.Tensor | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.weight.shape[0]

    def logits(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """``wᵀx + b`` for ``features`` ``(n, F)`` of layer ``layer``."""
        x = (features - self.mean[layer]) / self.std[layer]
        return x @ self.weight[layer] + self.bias[layer]

    def relevance(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """``r = σ(wᵀx + b)`` ``(n,)``."""
        return torch.sigmoid(self.logits(layer, features))

    def _part(self, layer: int, features: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        x = (features - self.mean[layer, columns]) / self.std[layer, columns]
        return x @ self.weight[layer, columns]

    def static_logits(self, layer: int, static: torch.Tensor) -> torch.Tensor:
        """The share of ``wᵀx`` of the :data:`STATIC_FEATURES` columns ``static`` ``(..., S)``:
        fixed while the token is cached, so the policy keeps this one number per slot instead of them."""
        return self._part(layer, static, _STATIC_COLUMNS)

    def relevance_folded(self, layer: int, dynamic: torch.Tensor, static_logits: torch.Tensor) -> torch.Tensor:
        """``r`` from the :data:`DYNAMIC_FEATURES` columns ``dynamic`` ``(..., D)`` and the slots'
        :meth:`static_logits`: the same value as :meth:`relevance` of the whole feature row."""
        return torch.sigmoid(self._part(layer, dynamic, _DYNAMIC_COLUMNS) + static_logits + self.bias[layer])

    @classmethod
    def prior(cls, num_layers: int) -> "RelevancePredictor":
        """Untrained: ``r = σ(log accumulated attention)``, H2O's ranking."""
        weight = torch.zeros(num_layers, NUM_FEATURES)
        weight[:, FEATURE_NAMES.index("attention_accumulated")] = 1.0
        return cls(weight, torch.zeros(num_layers), torch.zeros(num_layers, NUM_FEATURES),
                   torch.ones(num_layers, NUM_FEATURES), manifest={"predictor": "prior"})

    # -- files -----------------------------------------------------------------------------
    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``stem.pt`` and ``stem.json``; returns both paths."""
        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}
        if self.projection is not None:
            tensors["projection"] = self.projection
        if self.flags is not None:
            tensors["flags"] = pack_flags(self.flags)
        weights, manifest = stem.with_suffix(".pt"), stem.with_suffix(".json")
        partial = weights.with_suffix(".pt.partial")
        torch.save(tensors, partial)
        partial.replace(weights)
        write_atomic(manifest, json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        return weights, manifest

    @classmethod
    def load(cls, path: str | Path) -> "RelevancePredictor":
        """From ``NAME.pt`` (or ``NAME.json``/``NAME``): the weights and their manifest."""
        stem = Path(path)
        stem = stem.with_suffix("") if stem.suffix in (".pt", ".json") else stem
        tensors = torch.load(stem.with_suffix(".pt"), weights_only=True)
        manifest = json.loads(stem.with_suffix(".json").read_text())
        if tuple(manifest.get("features", ())) != FEATURE_NAMES:
            raise ValueError(f"predictor {stem}: its features {manifest.get('features')} are not this version's "
                             f"{list(FEATURE_NAMES)}; retrain it with streaming-llm train-relevance")
        flags = tensors.get("flags")
        return cls(tensors["weight"], tensors["bias"], tensors["mean"], tensors["std"], tensors.get("projection"),
                   None if flags is None else unpack_flags(flags), manifest)

    def check_model(self, model: torch.nn.Module, source: str) -> None:
        """Raise ``ValueError`` (naming ``predictor``) when this predictor was trained for another architecture."""
        expected, actual = self.manifest.get("model_fingerprint"), model_fingerprint(model)
        if expected is not None and expected != actual:
            raise ValueError(f"predictor={source!r} was trained for {expected}, not this model {actual}; "
                             "train one with streaming-llm train-relevance, or use predictor='prior'")


def shipped_predictors() -> list[Path]:
    folder = resources.files(__package__) / SHIPPED
    return sorted(Path(str(p)).with_suffix("") for p in folder.iterdir() if p.name.endswith(".json"))


def resolve_predictor(source: str, model: torch.nn.Module) -> RelevancePredictor:
    """``"auto"``: the shipped predictor trained for this model's architecture (the prior, with a
    warning, when none is); ``"prior"``: the
    untrained H2O-like ranking; otherwise a path written by ``streaming-llm train-relevance``."""
    num_layers = model_fingerprint(model)["num_hidden_layers"]
    if source == "prior":
        return RelevancePredictor.prior(num_layers)
    if source == "auto":
        fingerprint = model_fingerprint(model)
        for stem in shipped_predictors():
            if json.loads(stem.with_suffix(".json").read_text()).get("model_fingerprint") == fingerprint:
                return RelevancePredictor.load(stem)
        # every policy builds with its defaults on any model: fall back to the prior, loudly
        log.warning("atskv predictor='auto': no shipped predictor is trained for this model (%s); using the "
                    "untrained prior (accumulated attention). Train one with streaming-llm train-relevance and pass "
                    "predictor=PATH", fingerprint)
        return RelevancePredictor.prior(num_layers)
    predictor = RelevancePredictor.load(source)
    predictor.check_model(model, source)
    return predictor
