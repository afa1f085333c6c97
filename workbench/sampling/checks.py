"""Checks of the numbers a user passes to the sampling lab: one function per rule, one-line errors."""

from __future__ import annotations

import math
from typing import Any

from workbench.errors import SamplingError


def whole_number(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [``minimum``, ``maximum``], else a :class:`SamplingError` naming ``name`` and the fix."""
    bounds = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            value = int(number)
        except (TypeError, ValueError, OverflowError):
            raise SamplingError(f"{name} is {value!r}: pass a whole number {bounds}.") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise SamplingError(f"{name} is {value}: pass a whole number {bounds}.")
    return int(value)


def finite_number(name: str, value: Any, fix: str) -> float:
    """``value`` as a finite float, else a :class:`SamplingError` naming ``name`` and ``fix``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise SamplingError(f"{name} is {value!r}, not a number: {fix}.") from None
    if not math.isfinite(number):
        raise SamplingError(f"{name} is {number}: {fix}.")
    return number
