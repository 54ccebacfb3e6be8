"""Run safety of the workdir (issue 18): one writer, checksummed checkpoints, and
writes that fail (no space, read-only) stop the run in one line, resumably.

The small file systems are real where this runs as root with ``mount`` (a
1 MiB tmpfs, a read-only bind mount); the same failures are also injected at
the OS calls, so every path is tested without root too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import async_path
from reference import assert_same_state
from reference import quick_config as quick
from reference import without_timings as results

from random_bases import data as data_lib
from random_bases import train
from random_bases import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- helpers ------------------------------------------------------------------


def no_data_loading(monkeypatch):
  """Makes loading data fail the test: what is checked must come before it."""

  def fail(*args, **kwargs):
    raise AssertionError("data was loaded before the workdir was checked")

  monkeypatch.setattr(data_lib, "load_dataset", fail)


def one_line(error: Exception) -> str:
  message = str(error)
  assert "\n" not in message, message
  return message


def leftovers(directory: pathlib.Path) -> list[str]:
  """Temporary files and folders a failed write might leave behind."""
  return sorted(
    str(p.relative_to(directory))
    for p in directory.rglob("*")
    if p.name.endswith(".tmp") or ".write-probe" in p.name or workdir_lib.ORBAX_TMP_MARKER in p.name
  )


def epochs_started(monkeypatch) -> list[int]:
  """The 1-based epochs the trainer starts from now on."""
  started = []
  run_epoch = train.run_epoch

  def recording(trainer, state, epoch, *args):
    started.append(epoch + 1)
    return run_epoch(trainer, state, epoch, *args)

  monkeypatch.setattr(train, "run_epoch", recording)
  return started


def os_error(code: int, path) -> OSError:
  return OSError(code, os.strerror(code), str(path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The result of quick(train.epochs=4) run in one go."""
  return train.train_and_evaluate(
    quick(**{"train.epochs": 4}), str(tmp_path_factory.mktemp("uninterrupted"))
  )


def mount(*args) -> bool:
  """Runs ``mount args``; False where that cannot be done (not root, no mount)."""
  if os.geteuid() != 0 or shutil.which("mount") is None:
    return False
  return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs mounted in tmp_path (needs root), unmounted afterwards."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if not mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)):
    pytest.skip("making a 1 MiB file system needs root and mount")
  yield disk
  subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: pathlib.Path) -> None:
  fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"x" * 65536)
  except OSError as error:
    assert error.errno == errno.ENOSPC
  finally:
    os.close(fd)


# --- one writer -----------------------------------------------------------------

# Holds <workdir> the way a run does, until told to go on: it claims the
# workdir, writes <holding>, waits for <go> to exist, then loads the data and
# trains two epochs.
HOLD_THE_WORKDIR = textwrap.dedent("""
    import pathlib, sys, time
    sys.path.insert(0, sys.argv[4])
    from random_bases import train
    from reference import quick_config as quick

    workdir, holding, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    load_data = train.load_data

    def load_data_when_told(config):
      holding.write_text("holding")
      while not go.exists():
        time.sleep(0.05)
      return load_data(config)

    train.load_data = load_data_when_told
    train.train_and_evaluate(quick(**{"train.epochs": 2}), workdir)
""")


def start_holder(tmp_path: pathlib.Path, workdir: pathlib.Path) -> subprocess.Popen:
  """A run in another process that holds ``workdir`` (see HOLD_THE_WORKDIR)."""
  holding = tmp_path / "holding"
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      HOLD_THE_WORKDIR,
      str(workdir),
      str(holding),
      str(tmp_path / "go"),
      str(ROOT / "tests"),
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  deadline = time.monotonic() + 120
  while not holding.exists():
    if holder.poll() is not None or time.monotonic() > deadline:
      holder.kill()
      pytest.fail(f"the holding run did not get going:\n{holder.communicate()[0][-3000:]}")
    time.sleep(0.05)
  return holder


def test_a_second_run_on_a_workdir_in_use_is_refused_before_loading_data(tmp_path, monkeypatch):
  # Before: both runs trained, metrics.jsonl had every epoch twice and
  # config.json one of the two rates.
  workdir = tmp_path / "run"
  holder = start_holder(tmp_path, workdir)
  try:
    no_data_loading(monkeypatch)
    with pytest.raises(workdir_lib.WorkdirLocked) as e:
      train.train_and_evaluate(quick(**{"train.epochs": 2, "learning_rate.rbd": 2.0}), str(workdir))
    message = one_line(e.value)
    assert f"workdir {workdir} is in use by another run (pid {holder.pid} on host " in message
    assert f"on host {socket.gethostname()}, started 20" in message
    assert "pass another --workdir" in message
  finally:
    (tmp_path / "go").write_text("go")
    out, _ = holder.communicate(timeout=300)
  assert holder.returncode == 0, out[-3000:]
  run = workdir_lib.Workdir(str(workdir))
  assert [row["epoch"] for row in run.read_metrics()] == [1, 2]
  assert json.loads((workdir / "config.json").read_text())["learning_rate"]["rbd"] == 16.0
  assert (workdir / ".lock").read_text() == ""  # released when the holder ended


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = tmp_path / "run"
  holder = start_holder(tmp_path, workdir)
  holder.send_signal(signal.SIGKILL)
  holder.communicate()
  assert json.loads((workdir / ".lock").read_text())["pid"] == holder.pid  # the stale record
  with caplog.at_level(logging.WARNING):
    result = train.train_and_evaluate(quick(), str(workdir))
  assert [r["epoch"] for r in result["history"]] == [1]
  assert f"Workdir {workdir}: taking over the lock of a run that ended" in caplog.text
  assert f"pid {holder.pid} on host {socket.gethostname()}" in caplog.text
  assert (workdir / ".lock").read_text() == ""


def test_the_lock_is_one_per_workdir_in_one_process_too(tmp_path, caplog):
  first = workdir_lib.Workdir(str(tmp_path))
  first.claim()
  with pytest.raises(workdir_lib.WorkdirLocked, match=f"pid {os.getpid()} on host "):
    workdir_lib.Workdir(str(tmp_path)).claim()
  # Processes other than process 0 of a multi-process run do not lock.
  follower = workdir_lib.Workdir(str(tmp_path))
  follower.claim(lock=False)
  follower.release()
  first.release()
  with caplog.at_level(logging.WARNING):
    again = workdir_lib.Workdir(str(tmp_path))
    again.claim()  # a released lock is no stale lock
    again.release()
  assert "taking over" not in caplog.text


def test_without_os_locks_a_live_holders_record_is_respected(tmp_path, monkeypatch, caplog):
  def no_flock(fd, operation):
    raise os_error(errno.ENOLCK, "flock")

  monkeypatch.setattr(workdir_lib.fcntl, "flock", no_flock)
  ended = subprocess.Popen(["true"])  # a pid that has ended
  ended.wait()
  lock = tmp_path / ".lock"
  host = socket.gethostname()
  lock.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": "then"}))
  with pytest.raises(workdir_lib.WorkdirLocked, match=f"pid {os.getppid()} on host {host}"):
    workdir_lib.Workdir(str(tmp_path)).claim()
  lock.write_text(json.dumps({"pid": ended.pid, "host": host, "started": "then"}))
  with caplog.at_level(logging.WARNING):
    run = workdir_lib.Workdir(str(tmp_path))
    run.claim()
  assert "does not support locks" in caplog.text and f"pid {ended.pid}" in caplog.text
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  run.release()


# --- checksums --------------------------------------------------------------------


def random_state(epoch: int):
  """Incompressible, so a flipped byte changes values instead of failing to decode."""
  return {
    "step": jnp.asarray(epoch, jnp.int32),
    "w": jax.random.normal(jax.random.key(epoch), (100_000,)),
  }


def save_random_epochs(directory: pathlib.Path, epochs) -> None:
  checkpoints = workdir_lib.Workdir(str(directory)).checkpoints()
  for epoch in epochs:
    checkpoints.save(epoch, random_state(epoch))
  checkpoints.close()


def largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(directory: pathlib.Path) -> None:
  """Damages the checkpoint in ``directory`` in place: 64 bytes of its data, size kept."""
  victim = largest_file(directory)
  data = bytearray(victim.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 64):
    data[i] ^= 0x5A
  victim.write_bytes(bytes(data))


def test_a_checkpoint_damaged_in_place_is_set_aside_by_its_checksum(tmp_path, caplog):
  # Before: it restored without complaint, as weights.
  save_random_epochs(tmp_path, [1, 2])
  flip_bytes(tmp_path / "checkpoints" / "2")
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  with caplog.at_level(logging.WARNING):
    epoch, state = checkpoints.restore(lambda epoch: random_state(0))
  checkpoints.close()
  assert epoch == 1
  np.testing.assert_array_equal(state["w"], random_state(1)["w"])
  assert (
    f"Checkpoint {tmp_path / 'checkpoints' / '2'} is unreadable (its arrays do not match "
    "the sha256 checksum saved with them" in caplog.text
  )
  assert (tmp_path / "corrupt_checkpoints" / "2").is_dir()
  assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_no_intact_checkpoint_is_one_line_saying_how_to_start_fresh(tmp_path):
  # Before: a 100-line traceback ending in RuntimeError (once damage was detected at all).
  save_random_epochs(tmp_path, [1, 2])
  for epoch in ("1", "2"):
    flip_bytes(tmp_path / "checkpoints" / epoch)
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  with pytest.raises(workdir_lib.NoReadableCheckpoint) as e:
    checkpoints.restore(lambda epoch: random_state(0))
  checkpoints.close()
  message = one_line(e.value)
  assert isinstance(e.value, workdir_lib.WorkdirError)
  assert message.startswith(f"no checkpoint in {tmp_path / 'checkpoints'} reads back intact")
  assert "epoch 2: its arrays do not match the sha256 checksum" in message
  assert f"pass another --workdir or delete {tmp_path}" in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]  # nothing moved


def test_a_truncated_checkpoint_is_reported_with_its_real_cause(tmp_path, caplog):
  # Before: "(Exception: ... See full TensorStore details: <bound method pybind11_...".
  save_random_epochs(tmp_path, [1, 2])
  victim = largest_file(tmp_path / "checkpoints" / "2")
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  with caplog.at_level(logging.WARNING):
    epoch, _ = checkpoints.restore(lambda epoch: random_state(0))
  checkpoints.close()
  assert epoch == 1
  warning = next(r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage())
  assert "bound method" not in warning and "TensorStore details" not in warning, warning
  assert 'Error reading "w' in warning, warning  # tensorstore's own words, naming the array


def test_a_checkpoint_from_before_checksums_is_restored_with_a_warning(tmp_path, caplog):
  manager = ocp.CheckpointManager(  # as the code before checksums saved
    str(tmp_path / "checkpoints"), options=ocp.CheckpointManagerOptions(create=True)
  )
  manager.save(1, args=ocp.args.StandardSave(random_state(1)))
  manager.close()
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  with caplog.at_level(logging.WARNING):
    epoch, state = checkpoints.restore(lambda epoch: random_state(0))
  checkpoints.close()
  assert epoch == 1
  np.testing.assert_array_equal(state["w"], random_state(1)["w"])
  assert "has no checksum (written before checksums were kept): restored unverified" in (
    caplog.text
  )


def test_a_resumed_run_skips_a_damaged_checkpoint_and_ends_bit_identical(tmp_path, caplog):
  config = quick(**{"train.epochs": 2})
  whole = train.train_and_evaluate(config, str(tmp_path))
  flip_bytes(tmp_path / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    resumed = train.train_and_evaluate(config, str(tmp_path))
  assert "/checkpoints/2 is unreadable (its arrays do not match the sha256" in caplog.text
  assert [r["epoch"] for r in resumed["history"]] == [2]
  assert_same_state(whole, resumed)
  assert results(workdir_lib.Workdir(str(tmp_path)).read_metrics()) == results(whole["history"])


# --- failed writes ----------------------------------------------------------------


def test_a_full_disk_stops_the_run_before_loading_data(small_disk, monkeypatch):
  # Before: a raw "OSError: [Errno 28]" and config.json.tmp left behind.
  fill(small_disk)
  no_data_loading(monkeypatch)
  with pytest.raises(workdir_lib.WorkdirNotWritable) as e:
    train.train_and_evaluate(quick(), str(small_disk / "run"))
  assert one_line(e.value).startswith(f"cannot write {small_disk / 'run'}")
  assert ": no space left on the device. The run stopped;" in str(e.value)
  assert leftovers(small_disk) == []


def test_a_disk_filling_up_stops_the_run_at_the_failed_save_and_a_rerun_resumes(
  small_disk, uninterrupted, monkeypatch
):
  # Before: the failed background save of epoch 3 went unnoticed until epoch 4
  # had run, then ~330 lines of orbax tracebacks.
  started = epochs_started(monkeypatch)
  workdir = small_disk / "run"
  config = quick(**{"train.epochs": 4})
  with pytest.raises(workdir_lib.WorkdirNotWritable) as e:
    train.train_and_evaluate(config, str(workdir))
  message = one_line(e.value)
  # Two checkpoints of the FC model fit in 1 MiB; saving a third does not.
  assert message.startswith(f"cannot write {workdir / 'checkpoints' / '3'}: no space left")
  assert started == [1, 2, 3]  # epoch 4 did not start
  assert leftovers(small_disk) == []
  assert mount("-o", "remount,size=8m", str(small_disk))
  resumed = train.train_and_evaluate(config, str(workdir))
  assert [r["epoch"] for r in resumed["history"]] == [3, 4]
  assert_same_state(uninterrupted, resumed)
  rows = workdir_lib.Workdir(str(workdir)).read_metrics()
  assert results(rows) == results(uninterrupted["history"])


def test_a_failed_background_save_stops_the_run_before_the_next_epoch(
  tmp_path, uninterrupted, monkeypatch, caplog
):
  # The same failure, injected where orbax commits a checkpoint (its rename,
  # in a background thread), without root.
  rename = async_path.rename

  async def no_space_for_epoch_2(src, dst):
    if os.path.basename(str(dst)) == "2":
      raise os_error(errno.ENOSPC, dst)
    return await rename(src, dst)

  monkeypatch.setattr(async_path, "rename", no_space_for_epoch_2)
  started = epochs_started(monkeypatch)
  workdir = tmp_path / "run"
  config = quick(**{"train.epochs": 4})
  with caplog.at_level(logging.INFO), pytest.raises(workdir_lib.WorkdirNotWritable) as e:
    train.train_and_evaluate(config, str(workdir))
  message = one_line(e.value)
  assert message.startswith(f"cannot write {workdir / 'checkpoints' / '2'}: no space left")
  assert started == [1, 2]
  assert leftovers(workdir) == []
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no orbax tracebacks
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, str(workdir))
  assert [r["epoch"] for r in resumed["history"]] == [2, 3, 4]
  assert_same_state(uninterrupted, resumed)


def test_a_read_only_workdir_stops_the_run_before_loading_data(tmp_path, monkeypatch):
  # Before: a raw "OSError: [Errno 30]" traceback after the data had loaded.
  workdir = tmp_path / "run"
  workdir.mkdir()
  if not (
    mount("--bind", str(workdir), str(workdir)) and mount("-o", "remount,bind,ro", str(workdir))
  ):
    pytest.skip("a read-only bind mount needs root and mount")
  try:
    no_data_loading(monkeypatch)
    with pytest.raises(workdir_lib.WorkdirNotWritable) as e:
      train.train_and_evaluate(quick(), str(workdir))
  finally:
    subprocess.run(["umount", "-l", str(workdir)], check=False)
  assert one_line(e.value).startswith(
    f"cannot write {workdir / '.lock'}: the file system is read-only."
  )


@pytest.mark.parametrize(
  "code, words",
  [
    (errno.EROFS, "the file system is read-only"),
    (errno.EACCES, "permission denied"),
    (errno.ENOSPC, "no space left on the device"),
  ],
)
def test_an_unwritable_workdir_is_named_with_the_cause_in_words(code, words, tmp_path, monkeypatch):
  # As root, chmod does not stop writes: the OS's refusal is injected instead.
  workdir = tmp_path / "run"
  real_open = os.open

  def refusing_open(path, flags, *args, **kwargs):
    if str(path).startswith(str(workdir)) and flags & (os.O_WRONLY | os.O_RDWR):
      raise os_error(code, path)
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(os, "open", refusing_open)
  no_data_loading(monkeypatch)
  with pytest.raises(workdir_lib.WorkdirNotWritable) as e:
    train.train_and_evaluate(quick(), str(workdir))
  assert one_line(e.value).startswith(f"cannot write {workdir / '.lock'}: {words}. ")
  assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["config.json", "metrics.jsonl"])
def test_a_failed_write_leaves_the_file_as_it_was_and_no_temporary_file(
  target, tmp_path, monkeypatch
):
  # Before: config.json.tmp stayed behind; a cut metrics line could too.
  run = workdir_lib.Workdir(str(tmp_path))
  identity = {"dataset": "mnist", "fingerprint": "f00"}
  run.write_record(quick(), identity)
  run.append_metrics({"epoch": 1, "train_loss": 1.0})
  before = (tmp_path / target).read_bytes()

  def no_space(fd):
    raise os_error(errno.ENOSPC, target)

  monkeypatch.setattr(os, "fsync", no_space)
  with pytest.raises(workdir_lib.WorkdirNotWritable) as e:
    if target == "config.json":
      run.write_record(quick(**{"train.epochs": 3}), identity)
    else:
      run.append_metrics({"epoch": 2, "train_loss": 0.5})
  assert one_line(e.value).startswith(f"cannot write {tmp_path / target}: no space left")
  assert (tmp_path / target).read_bytes() == before
  assert leftovers(tmp_path) == []
