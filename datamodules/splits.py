"""Deterministic train/val/test splits from a seed, plain or stratified by label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ValueError unless both fractions are in [0, 1) and leave a training share."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}"
        )


def stratified_split(
    labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices per split: totals round(n * fraction); every label shares out within one of its quota.

    Each label's members, shuffled by ``seed``, get evenly spaced keys in [0, 1); cutting the items
    ordered by key gives every split the same mix of labels.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.argsort(keys, kind="stable")
    n_val = int(round(len(labels) * val_fraction))
    n_test = int(round(len(labels) * test_fraction))
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {name: np.sort(parts[name]).astype(np.int64) for name in SPLITS}


def random_split(count: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices per split of ``count`` items, shuffled by ``seed``."""
    return stratified_split(np.zeros(count, dtype=np.int64), val_fraction, test_fraction, seed)
