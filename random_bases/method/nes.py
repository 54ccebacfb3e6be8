"""Natural evolution strategies: a gradient estimate from forward passes only.

The baseline of the paper's Table 1 (Appendix A): with d perturbations
phi_n ~ N(0, I) of the parameters, all evaluated on the same mini-batch,

    g = 1/(sigma d) sum_n f_n phi_n,    f_n = L(theta + sigma phi_n)   (raw).

The reference code shapes fitness by centred ranks instead: the losses are
sorted worst (highest) first and the n-th gets u = rank/(d - 1) - 0.5, so the
best perturbation gets +0.5; it then steps theta <- theta + eta sum u phi/(sigma d).
As a descent direction that is f_n = -u_n above, which is what this module
returns, so both fitness shapes are applied as ``theta - eta g``.

Directions come from the same generator as the random bases (unnormalised,
keyed by ``fold_in(key, n)``), regenerated block by block, so memory does not
grow with d.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from random_bases.checks import check_choice
from random_bases.method import compartments as comp_lib
from random_bases.method import directions as dirs
from random_bases.method import projection

FITNESS = ("raw", "centered_ranks")


def centered_ranks(losses: jax.Array) -> jax.Array:
  """u_n = rank_n/(d - 1) - 0.5 with the highest loss ranked 0 (u = -0.5)."""
  d = losses.shape[0]
  order = jnp.argsort(-losses)  # worst first
  # zeros_like: ranks keep the losses' shard_map type (jax 0.10.2's argsort
  # types its result device-invariant even for device-varying losses).
  ranks = jnp.zeros_like(losses, jnp.float32).at[order].set(jnp.arange(d, dtype=jnp.float32))
  return ranks / max(d - 1, 1) - 0.5


def nes_gradient(
  loss_fn,
  params,
  *,
  key,
  d: int,
  sigma: float = 0.01,
  antithetic: bool = False,
  fitness: str = "raw",
  generator: str = dirs.DEFAULT_GENERATOR,
  block_rows: int | None = None,
):
  r"""Estimates the gradient of ``loss_fn`` at ``params`` with d forward passes.

  .. math::
      g = \frac{1}{\sigma d} \sum_{n=1}^{d} f_n \phi_n, \qquad
      \phi_n \sim N(0, I_D).

  Args:
    loss_fn: params -> scalar loss (on a fixed mini-batch).
    params: the parameter pytree theta.
    key: PRNG key of this estimate (fold in the step yourself).
    d: number of loss evaluations.
    sigma: perturbation scale (the paper: 0.01).
    antithetic: evaluate mirrored pairs theta +- sigma phi (d must be even;
      d/2 directions are drawn).
    fitness: ``'raw'`` (f_n = loss) or ``'centered_ranks'`` (the reference
      code's shaping, f_n = -u_n).
    generator: ``'hash'`` (default) or ``'threefry'``.
    block_rows: perturbations evaluated at once (vmapped forward passes).

  Returns:
    A pytree like ``params``: apply it as ``theta - eta * g`` (e.g. with
    ``optax.sgd``).

  Example:
    >>> g = nes_gradient(loss, params, key=jax.random.key(0), d=50)

  References:
    Wierstra et al. 2014; Salimans et al. 2017; the paper's Appendix A.
  """
  if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
    raise ValueError(f"d={d!r} must be a positive integer")
  if antithetic and d % 2:
    raise ValueError(f"d={d} must be even when antithetic=True")
  if not sigma > 0:
    raise ValueError(f"sigma={sigma!r} must be > 0")
  check_choice("fitness", fitness, FITNESS)
  check_choice("generator", generator, dirs.GENERATORS)

  layout = comp_lib.make_layout(params, d=1)
  num_directions = d // 2 if antithetic else d
  basis = projection.Basis(
    dirs.base_key(key),
    n=layout.size,
    dim=num_directions,
    distribution="normal",
    normalize="none",
    generator=generator,
    block_rows=block_rows or min(num_directions, 32),
  )
  theta = layout.ravel(params)

  def loss_at(flat):
    return loss_fn(layout.unravel(flat)).astype(jnp.float32)

  def losses_along(sign):
    def coordinate_fn(raw, scale):
      del scale  # unnormalised directions
      return jax.vmap(lambda phi: loss_at(theta + sign * sigma * phi))(raw)

    return projection.project(basis, coordinate_fn)

  losses = losses_along(1.0)
  if antithetic:
    losses = jnp.concatenate([losses, losses_along(-1.0)])
  f = losses if fitness == "raw" else -centered_ranks(losses)
  if antithetic:
    f = f[:num_directions] - f[num_directions:]  # f+ phi + f- (-phi)
  # expand() divides by the basis's dim with normalize='none'; the estimate
  # divides by d (all evaluations) and by sigma.
  weights = f * (num_directions / (sigma * d))
  return layout.unravel(projection.expand(basis, weights))
