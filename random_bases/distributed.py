"""Workers on a device mesh, in one process or across several.

The paper's distributed RBD (Alg. 1 right, §4.3) runs K workers. The trainer
maps its step over the axis ``WORKER_AXIS`` of a ``jax.sharding.Mesh``:

* one worker per device: ``jax.shard_map`` over a 1-D mesh of K devices
  (``worker_mesh``), the real thing, on one machine or across processes;
* all K workers on one device: ``jax.vmap`` over the axis, given a mesh whose
  worker axis has a single device. Same trajectory, no speed-up; it lets one
  device reproduce a K-worker run.

Several processes run the same command after ``initialize`` (a wrapper of
``jax.distributed.initialize``); ``jax.devices()`` then lists every process's
devices and the mesh spans them all.

``collectives`` lists the collective operations of a compiled program with
their shapes: what a step sends between workers.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

WORKER_AXIS = "workers"


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins this process to a multi-process run (``jax.distributed.initialize``).

  Call it before anything else uses JAX. Arguments left None are found by
  JAX: the coordinator's address in ``$JAX_COORDINATOR_ADDRESS``, and all
  three from a SLURM, Open MPI, Kubernetes or Cloud TPU environment. On CPU
  the processes exchange data through gloo collectives.

  Args:
    coordinator_address: ``host:port`` where process 0 serves the coordinator.
    num_processes: how many processes run the command.
    process_id: this process's index, 0 to num_processes - 1.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def is_primary() -> bool:
  """True in the process that writes the run's files (process 0)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process gets here (nothing to wait for in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _device_advice(workers: int) -> str:
  if jax.process_count() > 1:
    return ""
  return (
    f"; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count={workers} set before "
    "JAX starts gives that many devices, or pass a mesh whose "
    f"{WORKER_AXIS!r} axis has 1 device to run the workers vmapped on it"
  )


def worker_mesh(workers: int) -> Mesh:
  """A 1-D mesh of ``workers`` devices named ``WORKER_AXIS``: one worker per device.

  Raises:
    ValueError: fewer devices than workers; or, across processes, a number of
      workers other than the number of devices (a process without a worker
      would have nothing to run).
  """
  devices = jax.devices()
  if workers > len(devices):
    raise ValueError(
      f"workers={workers} needs {workers} devices, but {len(devices)} "
      f"{devices[0].platform} device(s) are available{_device_advice(workers)}"
    )
  if jax.process_count() > 1 and workers != len(devices):
    raise ValueError(
      f"workers={workers} must equal the {len(devices)} devices of the "
      f"{jax.process_count()} processes, so that every process runs workers"
    )
  return Mesh(np.array(devices[:workers]), (WORKER_AXIS,))


def check_mesh(mesh: Mesh, workers: int) -> None:
  """Raises ValueError unless ``mesh`` can run ``workers`` workers.

  It needs an axis ``WORKER_AXIS`` of ``workers`` devices (one worker each)
  or of 1 device (the workers vmapped on it); any other axis must have size 1.
  """
  if WORKER_AXIS not in mesh.axis_names:
    raise ValueError(
      f"the mesh has axes {tuple(mesh.axis_names)} but no {WORKER_AXIS!r} axis to run "
      f"workers={workers} workers over"
    )
  size = mesh.shape[WORKER_AXIS]
  if size not in (1, workers):
    raise ValueError(
      f"the mesh's {WORKER_AXIS!r} axis has {size} devices; workers={workers} needs "
      f"{workers} (one worker each) or 1 (all workers vmapped on it)"
    )
  others = {name: n for name, n in mesh.shape.items() if name != WORKER_AXIS and n > 1}
  if others:
    raise ValueError(f"the mesh's axes other than {WORKER_AXIS!r} must have size 1: {others}")


def resolve_mesh(workers: int, mesh: Mesh | None = None) -> Mesh | None:
  """The mesh ``workers`` workers run on: None for one worker, else checked or made.

  Raises:
    ValueError: as ``worker_mesh`` and ``check_mesh``, or a mesh given for
      one worker.
  """
  if workers == 1:
    if mesh is not None:
      raise ValueError("a mesh runs workers > 1; workers=1 trains on the default device")
    return None
  if mesh is None:
    return worker_mesh(workers)
  check_mesh(mesh, workers)
  return mesh


# --- what a compiled program communicates ------------------------------------

COLLECTIVE_OPS = (
  "all-gather",
  "all-reduce",
  "all-to-all",
  "collective-broadcast",
  "collective-permute",
  "ragged-all-to-all",
  "reduce-scatter",
)
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
# '%name = <result shape(s)> <op>(' with the op synchronous or the end of an
# asynchronous pair ('-done', whose result is the collective's output).
_COLLECTIVE_LINE = re.compile(
  r"=\s*(?P<result>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVE_OPS) + r")(?:-done)?\("
)
_ARRAY_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of a compiled program and the arrays it produces per device.

  Attributes:
    op: the HLO operation, e.g. ``"all-gather"``.
    shapes: ``(dtype, dims)`` of each result array (several when XLA combined
      collectives into one).
  """

  op: str
  shapes: tuple[tuple[str, tuple[int, ...]], ...]

  @property
  def elements(self) -> int:
    return sum(int(np.prod(dims, dtype=np.int64)) for _, dims in self.shapes)

  @property
  def bytes(self) -> int:
    return sum(
      int(np.prod(dims, dtype=np.int64)) * _DTYPE_BYTES.get(dtype, 8 if "64" in dtype else 4)
      for dtype, dims in self.shapes
    )


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective of a compiled HLO module, in program order.

  Args:
    hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

  Returns:
    One ``Collective`` per operation, with the shapes of its result: for an
    all-gather the gathered array, for an all-reduce the reduced one. An
    operation inside a loop body is listed once.
  """
  found = []
  for line in hlo_text.splitlines():
    match = _COLLECTIVE_LINE.search(line)
    if match is None:
      continue
    shapes = tuple(
      (dtype, tuple(int(n) for n in dims.split(",") if n))
      for dtype, dims in _ARRAY_SHAPE.findall(match["result"])
    )
    found.append(Collective(match["op"], shapes))
  return found
