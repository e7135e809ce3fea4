"""Datasets the shipped models train and are evaluated on: scikit-learn's bundled ones, no download.

Each dataset is split once, stratified, with a fixed seed, so the held-out accuracy in a model card can be
recomputed anywhere. Values are *raw* (digits pixels 0..16, tabular features in their own units): the
models carry their own preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.2
DATASETS = ("digits", "breast_cancer")


@dataclass(frozen=True)
class DatasetSplits:
    """A train/test split of raw values: ``*_x`` float32, ``*_y`` int64 class indices into ``labels``."""

    name: str
    split_seed: int
    labels: tuple[str, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@cache
def load_dataset(name: str) -> DatasetSplits:
    """Load ``name`` ("digits": (8, 8) images; "breast_cancer": (30,) features) with its fixed split.

    Cached per process: callers share the tensors and must not modify them in place.
    """
    # sklearn is imported here, not at module level: the serving path imports this package and never
    # needs it.
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name == "digits":
        bunch = datasets.load_digits()
        x, labels = bunch.images, tuple(str(label) for label in bunch.target_names)
    elif name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
        x, labels = bunch.data, tuple(str(label) for label in bunch.target_names)
    else:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")

    train_x, test_x, train_y, test_y = train_test_split(
        x, bunch.target, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )
    return DatasetSplits(
        name=name,
        split_seed=SPLIT_SEED,
        labels=labels,
        train_x=torch.from_numpy(np.asarray(train_x, dtype=np.float32)),
        train_y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        test_x=torch.from_numpy(np.asarray(test_x, dtype=np.float32)),
        test_y=torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
    )
