"""Random samples per second of each direction generator and distribution.

The inner loop alone on the CNN's D = 122,570: "generate" draws blocks of
directions and sums them; "fused" draws them and computes c = Phi g and
u = Phi^T c on each block, as the optimiser does.
"""

from __future__ import annotations

import dataclasses

from experiments.benchmarks import common

# The CNN's D, and enough directions for ~30 blocks.
GENERATOR_N, GENERATOR_DIM = 122_570, 512
REPEATS = 5


def measure_generators(
  *, n: int = GENERATOR_N, dim: int = GENERATOR_DIM, repeats: int = REPEATS
) -> list[dict]:
  """Samples/s of each generator and distribution: generation alone, and fused."""
  import jax
  import jax.numpy as jnp

  from random_bases.method import directions as dirs
  from random_bases.method import projection

  key = dirs.compartment_key(0, step=0, worker=0, compartment=0)
  g = jax.random.normal(jax.random.key(3), (n,))
  results = []
  for generator in dirs.GENERATORS:
    for distribution in dirs.DISTRIBUTIONS:
      basis = projection.Basis(
        key,
        n=n,
        dim=dim,
        distribution=distribution,
        normalize="norm",
        generator=generator,
        block_rows=None,
      )

      @jax.jit
      def generate(key, basis=basis):
        def body(total, b):
          rows = b * basis.block_rows + jnp.arange(basis.block_rows)
          raw = dirs.sample_rows(
            dirs.row_keys(key, rows), n, distribution=basis.distribution, generator=basis.generator
          )
          return total + jnp.sum(raw), None

        return jax.lax.scan(body, 0.0, jnp.arange(basis.num_blocks))[0]

      @jax.jit
      def fused(key, g, basis=basis):
        return projection.project_and_expand(
          dataclasses.replace(basis, key=key), projection.matvec_coordinates(g)
        )[1]

      row = {"generator": generator, "distribution": distribution, "block_rows": basis.block_rows}
      samples = basis.num_blocks * basis.block_rows * n
      for name, fn, args in (("generate", generate, (key,)), ("fused", fused, (key, g))):
        row[name] = samples / common.median_seconds(fn, *args, repeats=repeats)
      results.append(row)
  return results


def generator_table(rows: list[dict]) -> str:
  lines = [
    f"Generators alone: n = {GENERATOR_N:,}, {GENERATOR_DIM} directions, "
    f"default block rows ({rows[0]['block_rows']}).",
    "",
    "| generator | distribution | generate, M samples/s "
    "| fused with c = Phi g and u = Phi^T c, M samples/s |",
    "| --- | --- | --- | --- |",
  ]
  for r in rows:
    lines.append(
      f"| {r['generator']} | {r['distribution']} | {r['generate'] / 1e6:,.0f} "
      f"| {r['fused'] / 1e6:,.0f} |"
    )
  return "\n".join(lines)


def generator_spread_table(runs: list[list[dict]]) -> str:
  lines = [
    "| generator | distribution | generate, M samples/s per run | spread "
    "| fused, M samples/s per run | spread |",
    "|" + " --- |" * 6,
  ]
  for i, r in enumerate(runs[0]):
    generate = [run[i]["generate"] / 1e6 for run in runs]
    fused = [run[i]["fused"] / 1e6 for run in runs]
    lines.append(
      f"| {r['generator']} | {r['distribution']} "
      f"| {' / '.join(f'{x:,.0f}' for x in generate)} | {common.spread(generate)} "
      f"| {' / '.join(f'{x:,.0f}' for x in fused)} | {common.spread(fused)} |"
    )
  return "\n".join(lines)
