"""Random bases descent as optax gradient transformations.

Gressmann, Eaton-Rosen & Luschi, "Improving Neural Network Training in Low
Dimensional Random Bases", NeurIPS 2020 (arXiv:2011.04720).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from random_bases.checks import check_choice
from random_bases.method import compartments as comp_lib
from random_bases.method import directions as dirs
from random_bases.method import projection, structured


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class ParamsSignature:
  """Names, shapes and dtypes of the leaves of a parameter pytree.

  The containers are left out on purpose: libraries hand ``init`` and
  ``update`` the same leaves in different containers (flax NNX's
  ``nnx.Optimizer`` gives ``init`` a state of ``Variable``s and ``update``
  plain arrays; linen a ``FrozenDict`` and a dict), as optax's own transforms
  allow. Registered as static pytree data (a node without children): it costs
  nothing under ``jit``, is not written to checkpoints, and is known at trace
  time.
  """

  names: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[str, ...]

  @classmethod
  def of(cls, tree) -> ParamsSignature:
    leaves = jax.tree.leaves(tree)
    return cls(
      comp_lib.leaf_names(tree),
      tuple(tuple(np.shape(x)) for x in leaves),
      tuple(str(jnp.result_type(x)) for x in leaves),
    )

  def describe(self, index: int) -> str:
    return f"{self.names[index]!r} {self.shapes[index]} {self.dtypes[index]}"


# What init records for a tree without leaves. optax.tree.map_params calls
# init with such a tree (its placeholder) to find the parameter-shaped fields
# of the state; the signature is not one. Being a pytree leaf, unlike a
# ParamsSignature (a node, which would have to equal the real one), it makes
# map_params keep the real signature, or hand it to transform_non_params.
NO_PARAMETERS = "no parameters"


class ScaleByRandomBasesState(NamedTuple):
  """State of ``scale_by_random_bases``.

  Attributes:
    count: int32 scalar, the number of updates so far. With the seed it keys
      every basis, so nothing about the bases is stored, whatever d is.
    param_signature: the ``ParamsSignature`` of the parameters given to
      ``init``, so that ``update`` rejects a gradient with other leaves (names,
      shapes or dtypes) at trace time (``NO_PARAMETERS`` for a tree without
      leaves).
    coordinate_state: the state of ``coordinate_transform`` over the
      coordinate vector (``EmptyState()`` without one).
  """

  count: jax.Array
  param_signature: ParamsSignature | str
  coordinate_state: optax.OptState = optax.EmptyState()


def _normalize_mode(normalize) -> str:
  if normalize is True:
    return "norm"
  if normalize is False:
    return "none"
  check_choice("normalize", normalize, (True, False) + dirs.NORMALIZATIONS)
  return normalize


def _check_like_init(signature, tree, what: str) -> None:
  """Raises a ValueError unless ``tree`` has the leaves (names, shapes, dtypes) of init's."""
  received = ParamsSignature.of(tree)
  if received == signature:
    return
  if not isinstance(signature, ParamsSignature):
    if received.names:
      raise ValueError(
        f"{what} has parameters {list(received.names)} but init was given a tree without any"
      )
    return  # no leaves on either side: make_layout says so
  expected = {name: i for i, name in enumerate(signature.names)}
  found = {name: i for i, name in enumerate(received.names)}
  differences = [f"missing {signature.describe(i)}" for n, i in expected.items() if n not in found]
  differences += [
    f"unexpected {received.describe(i)}" for n, i in found.items() if n not in expected
  ]
  for name, i in expected.items():
    j = found.get(name)
    if j is not None and received.shapes[j] != signature.shapes[i]:
      differences.append(f"{name!r} has shape {received.shapes[j]}, expected {signature.shapes[i]}")
    elif j is not None and received.dtypes[j] != signature.dtypes[i]:
      differences.append(f"{name!r} has dtype {received.dtypes[j]}, expected {signature.dtypes[i]}")
  if not differences:  # the same leaves, flattened in another order
    differences = [f"leaves in the order {list(received.names)}, expected {list(signature.names)}"]
  shown = "; ".join(differences[:8])
  if len(differences) > 8:
    shown += f"; and {len(differences) - 8} more"
  raise ValueError(f"{what} does not match the parameters given to init: {shown}")


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
  structure: str = "dense",
  coordinate_transform: optax.GradientTransformation | None = None,
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
  Under ``shard_map``'s default checks the update is device-invariant, so
  parameters stay replicated; take each worker's gradient at its own copy,
  ``jax.grad(loss)(jax.lax.pcast(params, axis_name, to="varying"), ...)``,
  or JAX all-reduces the D-float gradient over the workers first.

  **Coordinate optimizers.** With ``coordinate_transform`` (an optax
  transformation, e.g. ``optax.scale_by_adam()``) the coordinates c of all
  compartments, concatenated, pass through it before the expansion:
  :math:`u = P_t\,\tau(c)`. With ``redraw=False`` this trains
  :math:`\theta_0 + P c` over c by that optimizer, Li et al.'s setup (Adam on
  the subspace coordinates). Its state holds its own statistics of the d
  coordinates (Adam: 2d floats), the only state that grows with d. With
  ``redraw=True`` coordinate i means a new direction every step, so
  statistics carried across steps (Adam's first moment) mix unrelated
  directions.

  Args:
    d: number of directions: the total when ``allocation='proportional'``,
      per compartment when ``'fixed'``, the compression factor c when
      ``'compression'``, or a sequence of per-compartment counts. Every
      compartment needs between 1 and n_k directions.
    seed: int (or integer scalar array) or PRNG key that, with the step,
      worker and compartment, keys every basis.
    redraw: draw a new basis every step (RBD) or keep the first (FPD).
    distribution: ``'normal'``, ``'uniform'`` (U[-1, 1]) or ``'bernoulli'``
      (+-1 with p = 0.5).
    normalize: ``True``/``'norm'`` scales each direction by its own norm;
      ``'expected'`` by its expected norm sqrt(n E[x^2]) (sqrt(D) for normal
      entries, as the reference code); ``False``/``'none'`` leaves directions
      as drawn and divides the update by d_k (the reference code).
    compartments: ``None``, K even slices (int), ``'leaf'``, ``'module'`` or a
      sequence of regular expressions over parameter names
      (``'dense_out/kernel'``: the key path the user sees, without flax NNX's
      ``/value``); see ``random_bases.method.compartments``.
    allocation: ``'proportional'``, ``'fixed'`` or ``'compression'``.
    axis_name: mapped axis of the workers, or None for a single worker.
    generator: ``'hash'`` (default), a counter hash of the same keys with
      Box-Muller normals, or ``'threefry'`` (``jax.random``, the reference).
      The two draw different directions for the same seed; see
      ``random_bases.method.directions``.
    block_rows: directions generated at a time, a speed/memory knob only (the
      update does not depend on it beyond float rounding). Default: rows of
      ``projection.DEFAULT_BLOCK_ELEMENTS`` elements, 16 in forward mode.
    structure: ``'dense'`` (i.i.d. directions, the paper), ``'srht'``
      (random rows of a randomly signed Hadamard matrix: +-1 entries,
      orthogonal rows) or ``'fastfood'`` (rows of S H G Pi H B,
      Gaussian-like). Structured bases cost O(N log N) per compartment and
      step whatever d is (N = n_k padded to a power of two) and fix their own
      entries, so they take only the default ``distribution='normal'``; in
      forward mode their directions are materialised a block at a time. See
      ``random_bases.method.structured``.
    coordinate_transform: an optax transformation applied to the coordinate
      vector (all compartments' c, concatenated) before the expansion, or
      None (the coordinates as they are). Single worker only
      (``axis_name=None``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``init`` checks the
    compartments against the parameters (ValueError before any jit) and
    records their leaves' names, shapes and dtypes; ``update`` raises ValueError, at
    trace time, for a gradient (or, in forward mode, parameters) whose leaves
    differ from init's in number, name, shape or dtype. The containers may
    differ (flax NNX's ``Variable``s at init, plain arrays at update), as in
    optax; the update comes back in the container of ``updates``.

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
  for name, value in (("d", d), ("compartments", compartments), ("block_rows", block_rows)):
    if isinstance(value, jax.Array):
      raise ValueError(
        f"{name}={value!r} must be a Python value, not an array: it sets "
        f"shapes. With optax.inject_hyperparams, list {name!r} in static_args"
      )
  comp_lib.validate_allocation(d, allocation)
  comp_lib.validate_scheme(compartments)
  check_choice("distribution", distribution, dirs.DISTRIBUTIONS)
  check_choice("generator", generator, dirs.GENERATORS)
  check_choice("structure", structure, structured.STRUCTURES)
  if structure != "dense" and distribution != "normal":
    raise ValueError(
      f"distribution={distribution!r} applies to dense bases only: structure="
      f"{structure!r} fixes its own entries; leave distribution at 'normal'"
    )
  normalize_mode = _normalize_mode(normalize)
  if block_rows is not None and (
    isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1
  ):
    raise ValueError(f"block_rows={block_rows!r} must be None or an int >= 1")
  if axis_name is not None and not isinstance(axis_name, str):
    raise ValueError(f"axis_name={axis_name!r} must be None or a string")
  dirs.base_key(seed)  # rejects seeds that are neither integers nor keys
  if coordinate_transform is not None:
    if not isinstance(coordinate_transform, optax.GradientTransformation):
      raise ValueError(
        f"coordinate_transform={coordinate_transform!r} must be None or an optax "
        "GradientTransformation, e.g. optax.scale_by_adam()"
      )
    if axis_name is not None:
      raise ValueError(
        "coordinate_transform applies to a single worker's coordinates: give "
        f"axis_name=None (got {axis_name!r}); workers apply the gathered coordinates as they are"
      )

  def layout_of(tree):
    return comp_lib.make_layout(tree, d=d, compartments=compartments, allocation=allocation)

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    if not jax.tree.leaves(params):  # e.g. optax.tree.map_params's placeholder
      return ScaleByRandomBasesState(count=count, param_signature=NO_PARAMETERS)
    layout = layout_of(params)
    coordinate_state = optax.EmptyState()
    if coordinate_transform is not None:
      total_d = sum(c.dim for c in layout.compartments)
      coordinate_state = coordinate_transform.init(jnp.zeros((total_d,), jnp.float32))
    return ScaleByRandomBasesState(
      count=count,
      param_signature=ParamsSignature.of(params),
      coordinate_state=coordinate_state,
    )

  def update_fn(updates, state, params=None, *, value_fn=None, **extra_args):
    del extra_args  # other transformations' extra arguments
    if value_fn is not None:
      if params is None:
        raise ValueError("forward mode (value_fn=...) needs params")
      _check_like_init(state.param_signature, params, "params")
      layout = layout_of(params)
    else:
      if updates is None:
        raise ValueError(
          "updates is None: pass the gradient, or pass "
          "value_fn=loss_of_params and params for forward mode"
        )
      _check_like_init(state.param_signature, updates, "updates")
      layout = layout_of(updates)
    step = state.count if redraw else jnp.zeros([], jnp.int32)

    if value_fn is None:
      g = layout.ravel(updates)
      coordinate_fns = [
        projection.matvec_coordinates(g[c.start : c.start + c.size]) for c in layout.compartments
      ]
    else:
      coordinate_fns = [_jvp_coordinates(value_fn, params, layout, c) for c in layout.compartments]
    rows = block_rows or (JVP_BLOCK_ROWS if value_fn is not None else None)
    bases = [
      projection.Basis(
        None,
        n=c.size,
        dim=c.dim,
        distribution=distribution,
        normalize=normalize_mode,
        generator=generator,
        block_rows=rows,
        structure=structure,
      )
      for c in layout.compartments
    ]

    def basis_for(k, worker):
      return dataclasses.replace(
        bases[k], key=dirs.compartment_key(seed, step=step, worker=worker, compartment=k)
      )

    # Compartment k's coordinates are coords[offsets[k] : offsets[k] + d_k].
    offsets = [sum(c.dim for c in layout.compartments[:k]) for k in range(len(bases))]

    def coordinates_of(worker):
      return jnp.concatenate(
        [projection.project(basis_for(k, worker), fn) for k, fn in enumerate(coordinate_fns)]
      )

    coordinate_state = state.coordinate_state
    if axis_name is None and coordinate_transform is None:
      pieces = [
        projection.project_and_expand(basis_for(k, 0), fn)[1] for k, fn in enumerate(coordinate_fns)
      ]
    elif axis_name is None:
      coords, coordinate_state = coordinate_transform.update(coordinates_of(0), coordinate_state)
      coords = coords.astype(jnp.float32)
      pieces = [
        projection.expand(basis_for(k, 0), coords[offsets[k] : offsets[k] + basis.dim])
        for k, basis in enumerate(bases)
      ]
    else:
      worker = jax.lax.axis_index(axis_name)
      coords = coordinates_of(worker)
      # Under shard_map's default checks the gathered coordinates are typed
      # the same on every worker, so the expansion loop and the update stay
      # device-invariant (parameters stay replicated). vmap, and shard_map
      # with check_vma=False, type nothing by device.
      gathered_type = (
        "invarying" if axis_name in jax.typeof(coords).manual_axis_type.varying else "varying"
      )
      every_worker = jax.lax.all_gather(coords, axis_name, to=gathered_type)  # [K, d]
      pieces = []
      for k, basis in enumerate(bases):

        def add_worker(w, u, k=k, basis=basis):
          c = jax.lax.dynamic_slice_in_dim(every_worker[w], offsets[k], basis.dim)
          return projection.expand(basis_for(k, w), c, u)

        pieces.append(
          jax.lax.fori_loop(
            0, every_worker.shape[0], add_worker, jnp.zeros((basis.n,), jnp.float32)
          )
        )
    new_updates = layout.unravel(jnp.concatenate(pieces))
    return new_updates, ScaleByRandomBasesState(
      count=optax.safe_increment(state.count),
      param_signature=state.param_signature,
      coordinate_state=coordinate_state,
    )

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


def rbd(
  learning_rate: optax.ScalarOrSchedule,
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
  structure: str = "dense",
  coordinate_transform: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Random bases descent: :math:`\theta \leftarrow \theta - \eta P_t P_t^\top g`.

  ``scale_by_random_bases`` followed by ``optax.scale_by_learning_rate``;
  the arguments after ``learning_rate`` are ``scale_by_random_bases``'s, which
  describes them in full. Every keyword is spelled out, so
  ``optax.inject_hyperparams`` can inject and schedule ``learning_rate``
  (list the structural ``d``, and ``compartments`` or ``block_rows`` when
  they are ints, in ``static_args``).

  Args:
    learning_rate: the step size eta, a float or an optax schedule.
    d: number of directions.
    seed: int, integer scalar array or PRNG key of the bases.
    redraw: a new basis every step (RBD) or the first one forever (FPD).
    distribution: distribution of the directions' entries.
    normalize: how each direction is scaled.
    compartments: how the parameters are split into independent bases.
    allocation: how ``d`` is split over the compartments.
    axis_name: mapped axis of the workers, or None for a single worker.
    generator: the random-number generator, ``'hash'`` or ``'threefry'``.
    block_rows: directions generated at a time (speed/memory only).
    structure: ``'dense'``, ``'srht'`` or ``'fastfood'`` directions.
    coordinate_transform: an optax transformation of the coordinates
      before the expansion (e.g. ``optax.scale_by_adam()``), or None.

  Returns:
    ``optax.chain(scale_by_random_bases(d, ...),
    optax.scale_by_learning_rate(learning_rate))``.

  Example:
    >>> tx = optax.inject_hyperparams(random_bases.rbd, static_args="d")(
    ...     learning_rate=optax.linear_schedule(0.1, 0.01, 1000), d=50)

  References:
    Gressmann, Eaton-Rosen & Luschi, NeurIPS 2020, Alg. 1.
  """
  return optax.chain(
    scale_by_random_bases(
      d,
      seed=seed,
      redraw=redraw,
      distribution=distribution,
      normalize=normalize,
      compartments=compartments,
      allocation=allocation,
      axis_name=axis_name,
      generator=generator,
      block_rows=block_rows,
      structure=structure,
      coordinate_transform=coordinate_transform,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )


def fpd(
  learning_rate: optax.ScalarOrSchedule,
  d,
  *,
  seed=0,
  distribution: str = "normal",
  normalize: bool | str = True,
  compartments=None,
  allocation: str = "proportional",
  axis_name: str | None = None,
  generator: str = dirs.DEFAULT_GENERATOR,
  block_rows: int | None = None,
  structure: str = "dense",
  coordinate_transform: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Fixed projection descent: ``rbd`` with ``redraw=False``.

  :math:`\theta \leftarrow \theta - \eta P_0 P_0^\top g` with one basis
  kept forever, which trains :math:`\theta_0 + P_0 c` over c by SGD.

  Args:
    learning_rate: the step size eta, a float or an optax schedule.
    d: number of directions.
    seed: int, integer scalar array or PRNG key of the basis.
    distribution: distribution of the directions' entries.
    normalize: how each direction is scaled.
    compartments: how the parameters are split into independent bases.
    allocation: how ``d`` is split over the compartments.
    axis_name: mapped axis of the workers, or None for a single worker.
    generator: the random-number generator, ``'hash'`` or ``'threefry'``.
    block_rows: directions generated at a time (speed/memory only).
    structure: ``'dense'``, ``'srht'`` or ``'fastfood'`` directions (with
      ``'fastfood'`` this is Li et al.'s Fastfood projection).
    coordinate_transform: an optax transformation of the coordinates c;
      ``optax.scale_by_adam()`` trains :math:`\theta_0 + P_0 c` by Adam, as
      Li et al. do.

  Returns:
    ``rbd(learning_rate, d, redraw=False, ...)``.

  References:
    Li, Farkhoor, Liu & Yosinski, "Measuring the Intrinsic Dimension of
    Objective Landscapes", ICLR 2018.
  """
  return rbd(
    learning_rate,
    d,
    seed=seed,
    redraw=False,
    distribution=distribution,
    normalize=normalize,
    compartments=compartments,
    allocation=allocation,
    axis_name=axis_name,
    generator=generator,
    block_rows=block_rows,
    structure=structure,
    coordinate_transform=coordinate_transform,
  )
