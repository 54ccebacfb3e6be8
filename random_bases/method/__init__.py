"""The method layer: random bases, compartments, the optax transforms, NES.

Depends on jax and optax only (never flax, tfds, ml_collections or the
trainer), so it drops into any training loop.
"""

from random_bases.method.compartments import ALLOCATIONS, BasisLayout, Compartment, make_layout
from random_bases.method.directions import (
  DISTRIBUTIONS,
  GENERATORS,
  NORMALIZATIONS,
  compartment_key,
  materialize_directions,
)
from random_bases.method.nes import FITNESS, centered_ranks, nes_gradient
from random_bases.method.structured import STRUCTURES, StructuredBasis, hadamard_transform
from random_bases.method.transform import ScaleByRandomBasesState, fpd, rbd, scale_by_random_bases

__all__ = [
  "ALLOCATIONS",
  "BasisLayout",
  "Compartment",
  "DISTRIBUTIONS",
  "FITNESS",
  "GENERATORS",
  "NORMALIZATIONS",
  "STRUCTURES",
  "ScaleByRandomBasesState",
  "StructuredBasis",
  "centered_ranks",
  "compartment_key",
  "fpd",
  "hadamard_transform",
  "make_layout",
  "materialize_directions",
  "nes_gradient",
  "rbd",
  "scale_by_random_bases",
]
