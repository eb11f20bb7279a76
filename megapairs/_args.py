"""Checks of arguments shared by the public modules; each raises ValueError naming the value."""

from __future__ import annotations


def positive(value: int, name: str) -> int:
    """``value`` when it is a positive int (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


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


PRECISIONS = ("fp32", "bf16")


def precision(value: str) -> str:
    """A ``precision=`` the kernels take: 'fp32' (exact references) or 'bf16' (bfloat16 matmul
    inputs, fp32 accumulation)."""
    if value not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {value!r}")
    return value
