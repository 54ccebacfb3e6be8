"""The data layer: ``readers`` (file formats), ``sources`` (where data comes
from, holdout splits) and ``preprocess`` (the jittable per-batch work).

Loading happens once, on the host, in NumPy (``load_dataset``); TensorFlow
Datasets is imported only when the "tfds" source is used.
"""

from __future__ import annotations

from random_bases.data.sources import (
  DATA_DIR_ENV_VAR,
  DATASET_NAMES,
  SOURCES,
  SPLITS,
  Dataset,
  load_dataset,
)

__all__ = ["DATA_DIR_ENV_VAR", "DATASET_NAMES", "Dataset", "SOURCES", "SPLITS", "load_dataset"]
