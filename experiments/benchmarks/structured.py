"""Structured bases (SRHT, Fastfood): their step-cost rows, and the Walsh-Hadamard transform.

The rows are ``step_cost``'s, with a structured basis: SGD, dense RBD at
d = 250 for reference, and RBD with each structured basis at the given d on
FC and the CNN (one compartment) and, on ResNet-8, with per-tensor
compartments at compression factors c = 100, 10 and 1. The Hadamard table
times ``structured.hadamard_transform`` (a Kronecker factorisation into
matmuls of at most 64 x 64) against a butterfly of log2 N sum-and-difference
stages, alone on a vector of N = 2^17 and inside a Fastfood basis's
c = Phi g and u = Phi^T c on the CNN's 122,570 parameters.
"""

from __future__ import annotations

from experiments.benchmarks import common
from experiments.benchmarks.step_cost import Config

STRUCTURES = ("srht", "fastfood")
DEFAULT_DIMS = "250,10000,100000"
# ResNet-8's rows: per-tensor compartments at these compression factors
# (d = 1,018, 7,982 and 78,330, Table 3's rule).
RESNET8_COMPRESSIONS = (100, 10, 1)
# The Hadamard table: the CNN's parameter count, the Fastfood basis's d, timed calls.
HADAMARD_N, HADAMARD_D, HADAMARD_REPEATS = 122_570, 250, 20


def structured_configs_for(model: str, dims: list[int], structures: list[str]) -> list[Config]:
  """The rows of one model's table of structured bases."""
  rows = [Config(model, "sgd"), Config(model, "rbd", 250)]
  for structure in structures:
    if model == "resnet8":
      rows += [
        Config(model, "rbd", c, compartments="leaf", allocation="compression", structure=structure)
        for c in RESNET8_COMPRESSIONS
      ]
    else:
      rows += [Config(model, "rbd", d, structure=structure) for d in dims]
  return rows


def structured_verdicts(rows: list[dict]) -> list[str]:
  """The structured bases' targets, on the CNN's rows of each structure."""
  lines = []
  for structure in sorted({r["structure"] for r in rows if r.get("structure")}):
    by_d = {
      r["d"]: r
      for r in rows
      if r["model"] == "cnn" and r.get("structure") == structure and r["compartments"] is None
    }
    if 250 in by_d:
      ratio = by_d[250]["ratio"]
      lines.append(
        f"CNN {structure}, d = 250: RBD step / SGD step = {ratio:.2f} (target <= 1.2): "
        + common.verdict(ratio <= 1.2)
      )
    if 10_000 in by_d:
      r = by_d[10_000]
      lines.append(
        f"CNN {structure}, d = 10,000: RBD step / SGD step = {r['ratio']:.2f} (target <= 1.5), "
        f"{r['images_per_s']:.0f} images/s (target > 600): "
        + common.verdict(r["ratio"] <= 1.5 and r["images_per_s"] > 600)
      )
    if 250 in by_d and 100_000 in by_d:
      small, large = by_d[250]["peak_rss_mib"], by_d[100_000]["peak_rss_mib"]
      lines.append(
        f"CNN {structure}, peak RSS at d = 100,000 / at d = 250 = {large:.0f} / {small:.0f} MiB "
        f"= {large / small:.2f} (target <= 1.3): " + common.verdict(large / small <= 1.3)
      )
  return lines


def butterfly_hadamard(x):
  """H x by log2 N stages of sums and differences: the alternative to the library's."""
  import jax.numpy as jnp

  *lead, size = x.shape
  half = 1
  while half < size:
    pairs = x.reshape(*lead, size // (2 * half), 2, half)
    a, b = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, size)
    half *= 2
  return x


def measure_hadamard(*, repeats: int = HADAMARD_REPEATS) -> list[dict]:
  """ms of the Kronecker and butterfly transforms, alone and inside Fastfood."""
  import jax

  from random_bases.method import directions as dirs
  from random_bases.method import structured

  n = HADAMARD_N
  size = structured.padded_size(n)
  x = jax.random.normal(jax.random.key(0), (size,))
  g = x[:n]
  key = dirs.compartment_key(0, step=0, worker=0, compartment=0)
  basis = structured.StructuredBasis(
    key, n=n, dim=HADAMARD_D, structure="fastfood", normalize="norm", generator="hash"
  )
  library = structured.hadamard_transform
  rows = []
  for name, transform in (("kronecker (library)", library), ("butterfly", butterfly_hadamard)):
    structured.hadamard_transform = transform  # what the basis's products call
    rows.append(
      {
        "method": name,
        "alone_ms": 1e3 * common.median_seconds(jax.jit(transform), x, repeats=repeats),
        "fastfood_ms": 1e3
        * common.median_seconds(jax.jit(basis.project_and_expand), g, repeats=repeats),
      }
    )
  structured.hadamard_transform = library
  return rows


def hadamard_table(rows: list[dict]) -> str:
  lines = [
    "Walsh-Hadamard transform, N = 2^17: alone, and in a Fastfood basis's c = Phi g and "
    "u = Phi^T c on n = 122,570 (d = 250, four transforms).",
    "",
    "| method | transform alone, ms | Fastfood project and expand, ms |",
    "| --- | --- | --- |",
  ]
  for r in rows:
    lines.append(f"| {r['method']} | {r['alone_ms']:.2f} | {r['fastfood_ms']:.2f} |")
  return "\n".join(lines)
