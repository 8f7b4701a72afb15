"""Deterministic train / validation / test splits, by seed; grouped, no group spans two."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")


def split(
    n: int,
    seed: int,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    groups: Sequence[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Sorted, disjoint row indices of `range(n)` for train, validation and test.

    The same `n`, `seed`, `fractions` and `groups` give the same split on every machine
    (numpy's PCG64). With `groups` (e.g. a machine id per row), whole groups are dealt to the
    splits, so no group's rows are in two of them; sizes then follow the fractions as closely
    as whole groups allow. Train always gets at least one row (one group)."""
    if len(fractions) != 3 or any(not 0 <= f < 1 for f in fractions[1:]) or fractions[0] <= 0:
        raise ValueError("fractions are (train, validation, test), train > 0, each below 1")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, not {sum(fractions)}")
    if n < 1:
        raise ValueError("cannot split an empty dataset")
    rng = np.random.Generator(np.random.PCG64(seed))
    if groups is None:
        order = rng.permutation(n)
        cuts = _cuts(n, fractions)
        parts = np.split(order, cuts)
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} rows")
        keys, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        order = rng.permutation(len(keys))
        sizes = np.bincount(inverse, minlength=len(keys))[order]
        # deal groups in the shuffled order until each split holds its share of the rows
        bounds = np.cumsum(sizes)
        targets = np.cumsum([fractions[0] * n, fractions[1] * n])
        first = max(1, int(np.searchsorted(bounds, targets[0], side="left")) + 1)
        first = min(first, len(keys))
        second = int(np.searchsorted(bounds, targets[1], side="left")) + 1
        second = min(max(first, second), len(keys))
        if fractions[2] > 0 and second == len(keys) and len(keys) - first >= 2:
            second = len(keys) - 1  # a test split asked for gets a group if any is left
        dealt = np.split(order, [first, second])
        parts = [np.flatnonzero(np.isin(inverse, d)) for d in dealt]
    pairs = zip(SPLITS, parts, strict=True)
    return {name: np.sort(np.asarray(p, dtype=np.int64)) for name, p in pairs}


def _cuts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    train = max(1, round(fractions[0] * n))
    validation = round(fractions[1] * n)
    if fractions[2] > 0 and train + validation >= n and n - train >= 2:
        validation = n - train - 1  # keep a test row when one was asked for
    return [train, min(n, train + validation)]
