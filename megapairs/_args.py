"""Checks of arguments shared by the public modules; each raises ValueError naming the value."""

from __future__ import annotations


def positive_or_none(value: int | None, name: str) -> int:
    """``value`` as the core takes it: 0 for None (the default), else a positive int."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def threads(num_threads: int | None) -> int:
    """A call's ``num_threads=``: 0 (the process default, see megapairs.set_num_threads) for None."""
    return positive_or_none(num_threads, "num_threads")
