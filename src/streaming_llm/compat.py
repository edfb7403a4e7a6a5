"""What moves inside the supported transformers range (pyproject.toml declares it; CI tests both ends).

- 5.24 renamed the cache argument of the models and of ``generate()`` from ``past_key_values`` to
  ``cache`` (the old name warns, and goes in 5.40). Our own calls use the name the installed model
  takes, so a run prints no deprecation warning caused by us; users may pass either.
- 5.13 renamed ``get_max_cache_shape`` to ``get_max_length``; 5.4 changed ``get_mask_sizes`` to take
  the query length instead of ``cache_position``. ``BoundedLayer`` answers both forms.
"""

from __future__ import annotations

import functools
import inspect

import torch


@functools.lru_cache(maxsize=None)
def _cache_argument_of(model_class: type) -> str:
    # ``inspect.signature`` follows the ``functools.wraps`` of transformers' deprecation decorator.
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword under which ``model(...)`` and ``model.generate(...)`` take the cache."""
    return _cache_argument_of(type(model))


def cache_kwargs(model: torch.nn.Module, cache) -> dict:
    """``{name: cache}`` for ``model(..., **cache_kwargs(model, cache))``, in the installed spelling."""
    return {cache_argument(model): cache}


def carries(args: tuple, kwargs: dict, cache) -> bool:
    """Whether a model call's arguments carry ``cache``, whatever its keyword (``past_key_values``,
    ``cache``) or position."""
    return any(value is cache for value in (*args, *kwargs.values()))


def returned_cache(outputs):
    """The cache a model call returned: ``outputs.cache`` from transformers 5.24 (where reading
    ``outputs.past_key_values`` logs a deprecation), ``outputs.past_key_values`` before."""
    return outputs["cache"] if "cache" in outputs else outputs.past_key_values


def query_length(sizes_argument: "int | torch.Tensor") -> int:
    """The chunk length ``get_mask_sizes`` is asked about: transformers >= 5.4 passes it, earlier
    versions pass the chunk's ``cache_position`` tensor."""
    return sizes_argument.shape[0] if isinstance(sizes_argument, torch.Tensor) else sizes_argument
