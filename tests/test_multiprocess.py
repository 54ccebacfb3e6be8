"""Two processes, four CPU devices each, train like one process with eight devices.

The README's two-process command (``--coordinator_address``,
``--num_processes``, ``--process_id``) trains the first epoch; the same
command, with every process saving the parameters it ends with, resumes the
run for a second. One process with eight devices trains both epochs in one go.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# python -c DRIVER <params.npz> <flags of random_bases.main>: the command line,
# and the parameters this process ends with saved to <params.npz>.
DRIVER = """
import sys
import jax, numpy as np
from absl import app
from random_bases import main, train

out, argv = sys.argv[1], sys.argv[2:]
train_and_evaluate = train.train_and_evaluate

def and_save_params(*args, **kwargs):
  result = train_and_evaluate(*args, **kwargs)
  np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(result["state"]["params"])])
  return result

train.train_and_evaluate = and_save_params
app.run(main.main, argv=["main", *argv], flags_parser=main.parse_flags)
"""

FLAGS = [
  "--config=configs/default.py:runlocal",
  "--config.workers=8",
  "--config.bases.d=10",
  "--config.train.steps_per_epoch=3",
  "--config.train.log_every_steps=3",
  "--config.train.eval_examples=200",
  "--config.train.eval_batch_size=200",
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start(command, devices):
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
  )
  return subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def finish(processes, timeout=300):
  """Waits for every process; on a failure kills the rest and shows its output."""
  try:
    for p in processes:
      out, _ = p.communicate(timeout=timeout)
      assert p.returncode == 0, out[-5000:]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()


def two_processes(command):
  address = f"localhost:{free_port()}"
  return [
    start(
      command(i) + [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      devices=4,
    )
    for i in range(2)
  ]


def params(path):
  with np.load(path) as f:
    return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_resume_and_end_like_one_process_with_eight_devices(tmp_path):
  split, whole = tmp_path / "two_processes", tmp_path / "one_process"
  driver = [sys.executable, "-c", DRIVER]
  # One process, eight devices, two epochs; alongside, two processes run the
  # first epoch with the plain command line.
  reference = start(
    [*driver, str(tmp_path / "one.npz"), *FLAGS, f"--workdir={whole}", "--config.train.epochs=2"],
    devices=8,
  )
  first = two_processes(
    lambda i: [
      sys.executable,
      "-m",
      "random_bases.main",
      *FLAGS,
      f"--workdir={split}",
      "--config.train.epochs=1",
    ]
  )
  finish([reference, *first])
  assert [row["epoch"] for row in metrics(split)] == [1]
  # The second epoch, resumed from the first one's checkpoint.
  finish(
    two_processes(
      lambda i: [
        *driver,
        str(tmp_path / f"process{i}.npz"),
        *FLAGS,
        f"--workdir={split}",
        "--config.train.epochs=2",
      ]
    )
  )
  zero, one, eight = (params(tmp_path / n) for n in ("process0.npz", "process1.npz", "one.npz"))
  for a, b, c in zip(zero, one, eight):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
  # Written once: one metrics line per epoch, one TensorBoard file per run.
  rows, reference_rows = metrics(split), metrics(whole)
  assert [(r["epoch"], r["step"]) for r in rows] == [(1, 3), (2, 6)]
  for key in ("train_loss", "validation_loss", "test_loss"):
    np.testing.assert_allclose(
      [r[key] for r in rows], [r[key] for r in reference_rows], rtol=1e-6, err_msg=key
    )
  assert len(os.listdir(split / "tensorboard")) == 2
  assert sorted(os.listdir(split / "checkpoints")) == ["1", "2"]
