"""Random bases descent as optax gradient transformations.

Gressmann, Eaton-Rosen & Luschi, "Improving Neural Network Training in Low
Dimensional Random Bases", NeurIPS 2020 (arXiv:2011.04720).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from random_bases.method import compartments as comp_lib
from random_bases.method import directions as dirs
from random_bases.method import projection


class ScaleByRandomBasesState(NamedTuple):
  """State of ``scale_by_random_bases``: the number of updates so far.

  The step count keys the basis, so the whole stream of bases is a pure
  function of (seed, count): nothing else is stored, whatever d is.
  """
  count: jax.Array  # int32 scalar


def _normalize_mode(normalize) -> str:
  if normalize is True:
    return "norm"
  if normalize is False:
    return "none"
  dirs.check_choice("normalize", normalize, (True, False) + dirs.NORMALIZATIONS)
  return normalize


# Forward mode runs one forward pass per direction in a block; fewer rows
# per block keep the activations of the vmapped passes small.
JVP_BLOCK_ROWS = 16


def scale_by_random_bases(
    d,
    *,
    seed=0,
    redraw: bool = True,
    distribution: str = "normal",
    normalize: bool | str = True,
    compartments=None,
    allocation: str = "proportional",
    axis_name: str | None = None,
    generator: str = dirs.DEFAULT_GENERATOR,
    block_rows: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Projects the gradient onto a random subspace and back.

  At step t, for every compartment k (default: one, covering all D
  parameters) draw ``d_k`` directions :math:`\phi_{i,t} \in R^{n_k}`
  (i.i.d. entries of ``distribution``, each vector scaled to unit length),
  compute the coordinates and return the update

  .. math::
      c_i = \langle g, \phi_{i,t} \rangle, \qquad
      u = \sum_i c_i \, \phi_{i,t} = P_t P_t^\top g,

  where :math:`P_t = [\phi_{1,t} \dots \phi_{d,t}]`. Chained with
  ``optax.scale_by_learning_rate(eta)`` this is random bases descent (RBD):
  :math:`\theta_{t+1} = \theta_t - \eta P_t P_t^\top \nabla L(\theta_t)`.
  ``redraw=False`` keeps :math:`P_0` forever: fixed projection descent (FPD,
  Li et al. 2018), which equals training :math:`\theta_0 + P c` over c by SGD.

  The basis is never stored: direction i is regenerated from the key
  ``fold_in(seed, step, worker, compartment, i)`` one block of rows at a time
  (see ``random_bases.method.directions``), so memory does not grow with d.

  **Generator.** On a CPU a step costs about d x D random numbers, so their
  generator sets the speed. The default, ``'hash'``, is a counter hash with
  float32-polynomial Box-Muller normals, several times faster than
  ``jax.random``'s threefry and tested for its statistics and for matching
  threefry's training accuracy (tests/test_generators.py; BENCHMARKS.md has
  the timings). ``generator='threefry'`` gives ``jax.random``'s numbers, the
  reference; the two draw different directions for the same seed.

  **Coordinates.** Reverse mode (default): ``updates`` is the gradient g and
  :math:`c = P^\top g`. Forward mode: pass the loss through optax's extra
  arguments, ``update(None, state, params, value_fn=loss_of_params)``; then
  :math:`c_i = \frac{d}{d\epsilon} L(\theta + \epsilon\,\phi_i)` by
  ``jax.jvp``, with no backward pass. Both give the same c for the same seed
  and step.

  **Workers.** With ``axis_name``, call ``update`` inside ``shard_map`` (or
  ``vmap``) over that axis: worker w = ``axis_index(axis_name)`` draws its own
  bases from its gradient, the K workers exchange only their coordinates (one
  ``all_gather`` of K x d floats), and every worker regenerates all K bases to
  apply the same update :math:`u = \sum_w P^w_t c^w` (Alg. 1 of the paper).

  Args:
    d: number of directions: the total when ``allocation='proportional'``,
      per compartment when ``'fixed'``, the compression factor c when
      ``'compression'``, or a sequence of per-compartment counts.
    seed: int or PRNG key that, with the step, worker and compartment, keys
      every basis.
    redraw: draw a new basis every step (RBD) or keep the first (FPD).
    distribution: ``'normal'``, ``'uniform'`` (U[-1, 1]) or ``'bernoulli'``
      (+-1 with p = 0.5).
    normalize: ``True``/``'norm'`` scales each direction by its own norm;
      ``'expected'`` by its expected norm sqrt(n E[x^2]) (sqrt(D) for normal
      entries, as the reference code); ``False``/``'none'`` leaves directions
      as drawn and divides the update by d_k (the reference code).
    compartments: ``None``, K even slices (int), ``'leaf'``, ``'module'`` or a
      sequence of regular expressions over parameter paths; see
      ``random_bases.method.compartments``.
    allocation: ``'proportional'``, ``'fixed'`` or ``'compression'``.
    axis_name: mapped axis of the workers, or None for a single worker.
    generator: ``'hash'`` (default), a counter hash keyed by the same keys
      with float32-polynomial Box-Muller normals, 5-6x faster than threefry
      on CPU and statistically tested (moments, KS normality, tails,
      independence; same training accuracy as threefry on MNIST), or
      ``'threefry'`` (``jax.random``, the reference generator). See
      ``random_bases.method.directions``. The two give different directions
      for the same seed.
    block_rows: directions generated at a time (a speed/memory knob only:
      the update does not depend on it beyond float rounding). Default: rows
      of about 2^21 elements on CPU (2^24 on accelerators), 16 in forward mode.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``init`` validates the
    compartments against the parameters (raising ValueError before any jit).

  Example:
    >>> import jax, jax.numpy as jnp, optax, random_bases
    >>> params = {"w": jnp.ones(100)}
    >>> loss = lambda p: jnp.sum(p["w"] ** 2)
    >>> tx = optax.chain(random_bases.scale_by_random_bases(10, seed=0),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.grad(loss)(params), state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Gressmann, Eaton-Rosen & Luschi, NeurIPS 2020, §3 and Alg. 1.
  """
  comp_lib.validate_allocation(d, allocation)
  comp_lib.validate_scheme(compartments)
  dirs.check_choice("distribution", distribution, dirs.DISTRIBUTIONS)
  dirs.check_choice("generator", generator, dirs.GENERATORS)
  normalize_mode = _normalize_mode(normalize)
  if block_rows is not None and (isinstance(block_rows, bool) or
                                 not isinstance(block_rows, int) or block_rows < 1):
    raise ValueError(f"block_rows={block_rows!r} must be None or an int >= 1")
  if axis_name is not None and not isinstance(axis_name, str):
    raise ValueError(f"axis_name={axis_name!r} must be None or a string")
  dirs.base_key(seed)  # rejects seeds that are neither ints nor keys

  def layout_of(tree):
    return comp_lib.make_layout(tree, d=d, compartments=compartments,
                                allocation=allocation)

  def init_fn(params):
    layout_of(params)
    return ScaleByRandomBasesState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
    del extra_args  # other transformations' extra arguments
    if value_fn is not None:
      if params is None:
        raise ValueError("forward mode (value_fn=...) needs params")
      layout = layout_of(params)
    else:
      if updates is None:
        raise ValueError("updates is None: pass the gradient, or pass "
                         "value_fn=loss_of_params and params for forward mode")
      layout = layout_of(updates)
    step = state.count if redraw else jnp.zeros([], jnp.int32)

    if value_fn is None:
      g = layout.ravel(updates)
      coordinate_fns = [projection.matvec_coordinates(g[c.start:c.start + c.size])
                        for c in layout.compartments]
    else:
      coordinate_fns = [_jvp_coordinates(value_fn, params, layout, c)
                        for c in layout.compartments]
    rows = block_rows or (JVP_BLOCK_ROWS if value_fn is not None else None)
    bases = [projection.Basis(None, n=c.size, dim=c.dim, distribution=distribution,
                              normalize=normalize_mode, generator=generator,
                              block_rows=rows)
             for c in layout.compartments]

    def basis_for(k, worker):
      return bases[k].with_key(dirs.compartment_key(
          seed, step=step, worker=worker, compartment=k))

    if axis_name is None:
      pieces = [projection.project_and_expand(basis_for(k, 0), fn)[1]
                for k, fn in enumerate(coordinate_fns)]
    else:
      worker = jax.lax.axis_index(axis_name)
      coords = jnp.concatenate([projection.project(basis_for(k, worker), fn)
                                for k, fn in enumerate(coordinate_fns)])
      every_worker = jax.lax.all_gather(coords, axis_name)  # [K, d]
      offsets = [sum(c.dim for c in layout.compartments[:k])
                 for k in range(len(bases))]
      pieces = []
      for k, basis in enumerate(bases):
        def add_worker(w, u, k=k, basis=basis):
          c = jax.lax.dynamic_slice_in_dim(every_worker[w], offsets[k], basis.dim)
          return projection.expand(basis_for(k, w), c, u)
        pieces.append(jax.lax.fori_loop(
            0, every_worker.shape[0], add_worker,
            jnp.zeros((basis.n,), jnp.float32)))
    new_updates = layout.unravel(jnp.concatenate(pieces))
    return new_updates, ScaleByRandomBasesState(
        count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _jvp_coordinates(value_fn, params, layout, compartment):
  """Forward mode: c_i = d/de L(params + e phi_i), one jvp per direction."""
  before = compartment.start
  after = layout.size - compartment.start - compartment.size

  def coordinate_fn(raw, scale):
    def along(direction):
      tangent = layout.unravel(jnp.pad(direction, (before, after)))
      return jax.jvp(value_fn, (params,), (tangent,))[1]
    return jax.vmap(along)(raw * scale[:, None]).astype(jnp.float32)
  return coordinate_fn


def rbd(learning_rate, d, **kwargs) -> optax.GradientTransformationExtraArgs:
  """Random bases descent: ``scale_by_random_bases`` then ``-learning_rate``.

  Args:
    learning_rate: float or optax schedule.
    d: number of directions (see ``scale_by_random_bases``).
    **kwargs: any other ``scale_by_random_bases`` argument.

  Returns:
    ``optax.chain(scale_by_random_bases(d, **kwargs),
    optax.scale_by_learning_rate(learning_rate))``.
  """
  return optax.chain(scale_by_random_bases(d, **kwargs),
                     optax.scale_by_learning_rate(learning_rate))


def fpd(learning_rate, d, **kwargs) -> optax.GradientTransformationExtraArgs:
  """Fixed projection descent (Li et al. 2018): RBD with ``redraw=False``."""
  if "redraw" in kwargs:
    raise ValueError("fpd fixes redraw=False; use rbd(...) to choose redraw")
  return rbd(learning_rate, d, redraw=False, **kwargs)
