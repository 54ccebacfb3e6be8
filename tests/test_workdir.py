"""The workdir contract: record and comparison, metrics and TensorBoard trimming,
checkpoints with fallback; then end to end through the trainer (issue 7, points 1-3)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import struct
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import reference
from reference import assert_same_state, tiny_config
from reference import quick_config as quick
from reference import without_timings as results
from tensorboardX.proto import event_pb2

from random_bases import config_lib, train
from random_bases import data as data_lib
from random_bases import workdir as workdir_lib

# --- helpers ------------------------------------------------------------------


def read_events(path: pathlib.Path):
  """The Event protos of one TFRecord event file (length, crc, data, crc)."""
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at : at + 8])
    events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
    at += 12 + length + 4
  return events


def tensorboard_view(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """The scalars TensorBoard shows: files in name order, and at a SessionLog
  START event every earlier event at a step >= its step is purged (TensorBoard's
  EventAccumulator with purge_orphaned_data, its default)."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    for event in read_events(path):
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        scalars = {
          tag: [(s, v) for s, v in points if s < event.step] for tag, points in scalars.items()
        }
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  return {
    str(p.relative_to(directory)): p.read_bytes()
    for p in sorted(directory.rglob("*"))
    if p.is_file()
  }


def write_run(workdir: pathlib.Path, config, epochs=(1, 2)) -> workdir_lib.Workdir:
  """A workdir as a run of ``config`` leaves it (record and metrics lines)."""
  run = workdir_lib.Workdir(str(workdir))
  run.write_record(
    config,
    {
      "dataset": "mnist",
      "sample": True,
      "images": {"train": 1600},
      "fingerprint": "f00",
      "source": "sample",
    },
  )
  for epoch in epochs:
    run.append_metrics({"epoch": epoch, "train_loss": 1.0 / epoch})
  return run


# --- the record ---------------------------------------------------------------


def test_a_different_config_is_refused_with_the_fields_that_differ(tmp_path):
  run = write_run(tmp_path, tiny_config(**{"train.epochs": 2}))
  before = snapshot(tmp_path)
  with pytest.raises(workdir_lib.WorkdirMismatch) as e:
    run.check_config(tiny_config(**{"bases.d": 10, "train.epochs": 3, "learning_rate.rbd": 2.0}))
  message = str(e.value)
  assert "  bases.d: 50 -> 10\n  learning_rate.rbd: 16.0 -> 2.0\n" in message
  assert "train.epochs" not in message.split("Fields that may change")[0]
  assert f"pass another --workdir or delete {tmp_path}" in message
  assert snapshot(tmp_path) == before


@pytest.mark.parametrize("field", workdir_lib.RESUMABLE_FIELDS)
def test_each_resumable_field_may_change(field, tmp_path):
  config_lib.check_field_name(field)  # names a field of the schema
  run = write_run(tmp_path, tiny_config())
  default = config_lib.field_values(tiny_config())[field]
  if isinstance(default, bool):
    changed = not default
  elif isinstance(default, int):
    changed = default + 5
  else:
    changed = "/moved/data"
  run.check_config(tiny_config(**{field: changed}))


def test_a_run_recorded_before_a_field_existed_resumes_at_its_default(tmp_path):
  run = write_run(tmp_path, tiny_config())
  record = json.loads((tmp_path / "config.json").read_text())
  del record["workers"]  # written by a version without the field
  (tmp_path / "config.json").write_text(json.dumps(record))
  run.check_config(tiny_config())  # workers=1, the default: the same run
  with pytest.raises(workdir_lib.WorkdirMismatch, match="workers: 1 -> 2"):
    run.check_config(tiny_config(workers=2))


def test_fewer_epochs_than_the_checkpoints_hold_are_refused(tmp_path):
  run = write_run(tmp_path, tiny_config(**{"train.epochs": 3}), epochs=(1, 2, 3))
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  with pytest.raises(workdir_lib.WorkdirMismatch, match="after epoch 3; train.epochs=2"):
    run.check_config(tiny_config(**{"train.epochs": 2}))


def test_a_workdir_without_a_done_epoch_accepts_any_config(tmp_path):
  run = write_run(tmp_path, tiny_config(), epochs=())  # the run failed in epoch 1
  run.check_config(tiny_config(**{"bases.d": 10}))


def test_outputs_without_a_record_are_refused(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  run.append_metrics({"epoch": 1})
  with pytest.raises(workdir_lib.WorkdirMismatch, match="no config.json"):
    run.check_config(tiny_config())


def test_other_data_is_refused_but_another_location_is_not(tmp_path):
  run = write_run(tmp_path, tiny_config())
  same = {
    "dataset": "mnist",
    "sample": True,
    "images": {"train": 1600},
    "fingerprint": "f00",
    "source": "files:/moved",
  }
  run.check_data(same)
  with pytest.raises(workdir_lib.WorkdirMismatch) as e:
    run.check_data(dict(same, sample=False, images={"train": 50_000}, fingerprint="abc"))
  assert (
    "  fingerprint: 'f00' -> 'abc'\n  images.train: 1600 -> 50000\n  sample: True -> False\n"
  ) in str(e.value)


def test_data_identity_tells_datasets_apart():
  a = data_lib.load_dataset("mnist", source="sample", holdout_size=400)
  b = data_lib.load_dataset("mnist", source="sample", holdout_size=400, holdout_seed=1)
  ida, idb = workdir_lib.data_identity(a), workdir_lib.data_identity(b)
  assert ida == workdir_lib.data_identity(a)
  assert ida["images"] == {"train": 1600, "validation": 400, "test": 1000}
  assert ida["fingerprint"] != idb["fingerprint"]  # other images held out


# --- metrics and TensorBoard ----------------------------------------------------


def test_strict_json_writes_non_finite_values_as_null_with_a_flag():
  line = workdir_lib.strict_json(
    {"epoch": 1, "train_loss": float("nan"), "test_loss": float("inf"), "test_accuracy": 0.5}
  )

  def no_constants(name):
    raise AssertionError(f"non-standard JSON constant {name}")

  assert json.loads(line, parse_constant=no_constants) == {
    "epoch": 1,
    "train_loss": None,
    "test_loss": None,
    "test_accuracy": 0.5,
    "non_finite": ["train_loss", "test_loss"],
  }


def test_trim_metrics_keeps_the_restored_epochs_once(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  # What the old order left: epoch 2 written twice, and a line cut by a crash.
  lines = [{"epoch": 1, "v": 1}, {"epoch": 2, "v": 2}, {"epoch": 2, "v": 22}, {"epoch": 3, "v": 3}]
  (tmp_path / "metrics.jsonl").write_text(
    "".join(json.dumps(row) + "\n" for row in lines) + '{"epoch": 4, "v"'
  )
  run.trim_metrics(2)
  assert run.read_metrics() == [{"epoch": 1, "v": 1}, {"epoch": 2, "v": 22}]
  run.trim_metrics(0)
  assert run.read_metrics() == []


def test_tensorboard_hides_what_a_crashed_run_wrote_past_the_checkpoint(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  first = run.summary_writer(restored_step=0)
  for step, value in [(10, 1.0), (20, 2.0), (30, 3.0)]:  # epochs 1-3; 3 not checkpointed
    first.add_scalar("train_loss", value, step)
  first.close()
  second = run.summary_writer(restored_step=20)  # in the same second as the first
  second.add_scalar("train_loss", 3.5, 30)
  second.close()
  assert len(list((tmp_path / "tensorboard").iterdir())) == 2  # neither file overwritten
  assert tensorboard_view(tmp_path / "tensorboard") == {
    "train_loss": [(10, 1.0), (20, 2.0), (30, 3.5)]
  }


# --- checkpoints ----------------------------------------------------------------


def small_state(value: float):
  return {"step": jnp.asarray(int(value), jnp.int32), "w": jnp.full((300,), value)}


def save_epochs(directory: pathlib.Path, epochs) -> None:
  checkpoints = workdir_lib.Workdir(str(directory)).checkpoints()
  for epoch in epochs:
    checkpoints.save(epoch, small_state(float(epoch)))
  checkpoints.close()


def truncate_largest_file(directory: pathlib.Path) -> pathlib.Path:
  victim = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  return victim


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  save_epochs(tmp_path, [1, 2])
  truncate_largest_file(tmp_path / "checkpoints" / "2")
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  with caplog.at_level(logging.WARNING):
    epoch, state = checkpoints.restore(lambda epoch: small_state(0.0))
  assert epoch == 1
  np.testing.assert_array_equal(state["w"], np.full((300,), 1.0))
  assert f"Checkpoint {tmp_path / 'checkpoints' / '2'} is unreadable" in caplog.text
  assert (tmp_path / "corrupt_checkpoints" / "2").is_dir()
  checkpoints.save(2, small_state(2.5))  # the epoch can be saved again
  checkpoints.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_no_readable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
  save_epochs(tmp_path, [1])
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  with pytest.raises(workdir_lib.NoReadableCheckpoint, match="no checkpoint .* reads back") as e:
    checkpoints.restore(lambda epoch: {"other": jnp.zeros(3)})  # a changed state layout
  checkpoints.close()
  assert "\n" not in str(e.value)  # one line, as entry points print a WorkdirError
  assert f"pass another --workdir or delete {tmp_path}" in str(e.value)
  assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_unfinished_orbax_directories_are_removed(tmp_path):
  save_epochs(tmp_path, [1])
  (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp" / "default").mkdir(parents=True)
  checkpoints = workdir_lib.Workdir(str(tmp_path)).checkpoints()
  epoch, _ = checkpoints.restore(lambda epoch: small_state(0.0))
  checkpoints.close()
  assert epoch == 1 and os.listdir(tmp_path / "checkpoints") == ["1"]


# --- end to end through the trainer ---------------------------------------------


def test_rerun_with_another_config_stops_before_writing(tmp_path):
  # Before: epochs 1-2 trained with d=50, epoch 3 with d=10, config.json said 10.
  train.train_and_evaluate(quick(**{"train.epochs": 2}), str(tmp_path))
  before = snapshot(tmp_path)
  with pytest.raises(workdir_lib.WorkdirMismatch, match=r"\n  bases.d: 50 -> 10\n"):
    train.train_and_evaluate(quick(**{"bases.d": 10, "train.epochs": 3}), str(tmp_path))
  assert snapshot(tmp_path) == before


def test_extending_a_finished_hybrid_run_grows_its_open_last_phase(tmp_path):
  def config(epochs):
    return quick(**{"phases": "rbd:1,sgd", "train.epochs": epochs})

  whole = train.train_and_evaluate(config(3), str(tmp_path / "whole"))
  first = train.train_and_evaluate(config(2), str(tmp_path / "run"))
  extended = train.train_and_evaluate(config(3), str(tmp_path / "run"))
  assert [r["method"] for r in first["history"]] == ["rbd", "sgd"]
  assert [(r["epoch"], r["method"]) for r in extended["history"]] == [(3, "sgd")]
  assert_same_state(whole, extended)
  assert results(workdir_lib.Workdir(str(tmp_path / "run")).read_metrics()) == results(
    whole["history"]
  )


# Dies like SIGKILL at the moment orbax would commit checkpoint 2 (renaming
# its temporary directory), after everything else of epoch 2 was written.
CRASH_WHILE_SAVING_EPOCH_2 = textwrap.dedent("""
    import json, os, sys
    from orbax.checkpoint._src.path import async_path
    from random_bases import train
    from reference import quick_config as quick

    rename = async_path.rename

    async def die_before_committing_epoch_2(src, dst):
      if os.path.basename(str(dst)) == "2":
        os._exit(9)
      return await rename(src, dst)

    async_path.rename = die_before_committing_epoch_2
    train.train_and_evaluate(quick(**json.loads(sys.argv[2])), sys.argv[1])
""")


def test_a_crash_while_a_checkpoint_commits_leaves_a_consistent_workdir(tmp_path):
  # Before: two "epoch": 2 lines and a leftover 2.orbax-checkpoint-tmp directory.
  overrides = {"train.epochs": 2}
  run = tmp_path / "run"
  crashed = reference.run_in_fresh_process(
    CRASH_WHILE_SAVING_EPOCH_2, run, json.dumps(overrides), check=False
  )
  assert crashed.returncode == 9, crashed.stderr[-3000:]
  assert (run / "checkpoints" / "2.orbax-checkpoint-tmp").exists()  # the window was hit

  resumed = train.train_and_evaluate(quick(**overrides), str(run))
  whole = train.train_and_evaluate(quick(**overrides), str(tmp_path / "whole"))
  assert [r["epoch"] for r in resumed["history"]] == [2]
  assert_same_state(whole, resumed)
  rows = workdir_lib.Workdir(str(run)).read_metrics()
  assert results(rows) == results(whole["history"])
  assert sorted(os.listdir(run / "checkpoints")) == ["1", "2"]
  view = tensorboard_view(run / "tensorboard")
  for key in ("train_loss", "validation_accuracy", "test_loss"):
    np.testing.assert_allclose(view[key], [(r["step"], r[key]) for r in rows], rtol=1e-6)
  assert [s for s, _ in view["interval/train_loss"]] == [5, 10, 15, 20]


def test_a_corrupt_latest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
  # Before: a tensorstore traceback although checkpoint 1 was intact.
  config = quick(**{"train.epochs": 2})
  whole = train.train_and_evaluate(config, str(tmp_path))
  truncate_largest_file(tmp_path / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    resumed = train.train_and_evaluate(config, str(tmp_path))
  assert f"Checkpoint {tmp_path / 'checkpoints' / '2'} is unreadable" in caplog.text
  assert [r["epoch"] for r in resumed["history"]] == [2]
  assert_same_state(whole, resumed)
  assert results(workdir_lib.Workdir(str(tmp_path)).read_metrics()) == results(whole["history"])
