"""Argument checks shared by every config and command (a leaf module: it imports nothing of ours).

Each raises ``ValueError`` naming the parameter and what is allowed, the error every config of
the project raises for a bad value.
"""

from __future__ import annotations

from typing import Any


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None, *, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) in ``[minimum, maximum]``
    (``None`` also passes with ``optional``). Floats fail: 2.5 tokens is a mistake, not something to round."""
    if optional and value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= minimum
    if ok and (maximum is None or value <= maximum):
        return
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise ValueError(f"{name} must be an integer {allowed}{' or None' if optional else ''}; got {value!r}")


def check_fraction(name: str, value: Any, *, allow_zero: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is a number (not a bool) in ``[0, 1]`` (``(0, 1]``
    without ``allow_zero``)."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not (0.0 <= value <= 1.0 if allow_zero else 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be a number in {'[0, 1]' if allow_zero else '(0, 1]'}; got {value!r}")
