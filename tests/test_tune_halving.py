"""The tuner's successive halving (issue 20): the schedule, resuming, the results file."""

import json
import math
import os
import pathlib
import shutil

import pytest

from experiments import reproduce, runs, tune
from random_bases import train
from random_bases import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_survivors_keep_the_best_share_but_at_least_the_floor():
  assert [tune.survivors(n, 3, 2) for n in (27, 9, 4, 3, 2, 1)] == [9, 3, 2, 2, 2, 1]
  assert [tune.survivors(n, 2, 1) for n in (10, 5, 3, 1)] == [5, 3, 2, 1]


# A synthetic loss table: the best rate moves down as the trials get longer (short trials
# favour large rates), 2^3 and above diverge from length 4 on.
def synthetic_loss(k: int, length: int) -> float:
  if k >= 3 and length >= 4:
    return math.inf
  best = {1: 2, 4: 1, 16: 0}[length]
  return (k - best) ** 2 / length + 1.0 / length


def test_halving_carries_the_best_third_and_picks_at_the_longest_length():
  tried = []

  def loss_at(k, length):
    tried.append((k, length))
    return synthetic_loss(k, length)

  table = tune.successive_halving(
    loss_at, rates=list(range(-4, 6)), lengths=[1, 4, 16], keep=3, floor=2
  )
  # Length 1: all ten; 2 best, then 1 and 3 (tie 1.0 + 1: 1 < 3), so ceil(10 / 3) = 4 go on:
  # 2, 1, 3, 0 (losses 1, 2, 2, 5).
  assert sorted(table[1]) == list(range(-4, 6))
  assert sorted(table[4]) == [0, 1, 2, 3]
  # Length 4: 3 diverged; of 1 (0.25), 0 and 2 (0.5 each), ceil(4 / 3) = 2 go on: 1 and 0.
  assert table[4][3] == math.inf
  assert sorted(table[16]) == [0, 1]
  assert {length: tune.best_rate(losses) for length, losses in table.items()} == {
    1: 2,
    4: 1,
    16: 0,
  }
  assert tune.chosen(table) == 0
  assert len(tried) == 10 + 4 + 2  # each (rate, length) once


def test_halving_stops_when_every_rate_diverges_and_never_carries_a_diverged_one():
  table = tune.successive_halving(
    lambda k, length: math.inf if k > 0 or length > 1 else 1.0 - k / 10,
    rates=[-2, -1, 0, 1, 2],
    lengths=[1, 2, 4],
    keep=2,
    floor=4,
  )
  # Three finite at length 1 (floor 4 but only 3 finite): those go on, then all diverge.
  assert sorted(table[2]) == [-2, -1, 0]
  assert 4 not in table
  assert tune.chosen(table) is None
  with pytest.raises(ValueError, match="increasing"):
    tune.successive_halving(lambda k, n: 0.0, rates=[0], lengths=[4, 1], keep=2, floor=1)


def test_table4_halving_arguments_are_checked_before_anything_runs():
  module = reproduce.load_config_module(str(ROOT / "configs" / "table4.py"))
  entries = module.sweep("search=halving,pairs=fc-mnist,methods=rbd,structure=srht,stride=1")
  assert {e["train.epochs"] for e in entries} == {1}
  assert {e["bases.structure"] for e in entries} == {"srht"}
  assert len(entries) == 18  # 2^-12 .. 2^5
  assert entries[0]["paper"] == {"log2_rate": (1, 0)}
  spec = module.report("search=halving,steps=625")["tune"]
  assert (spec["search"], spec["rungs"], spec["keep"], spec["floor"]) == (
    "halving",
    [1, 4, 16, 64],
    3,
    2,
  )
  assert "40,000 steps" in spec["lengths_text"]
  for bad, field in (("rungs=4+1", "rungs"), ("rungs=a", "rungs"), ("search=grid", "search")):
    with pytest.raises(ValueError, match=field):
      module.sweep(f"search=halving,{bad}" if field != "search" else bad)
  # The coarse search's entries have no structure field: their workdirs are unchanged.
  assert "bases.structure" not in module.sweep("pairs=fc-mnist,methods=rbd")[0]


def halving_trainer(calls):
  """Fakes training: appends an epoch row per epoch asked for, loss synthetic_loss(k, epoch).

  A run extended to more epochs keeps its earlier rows, as the trainer's resume does.
  Rates >= 2^3 diverge at epoch 2 (after writing epoch 1).
  """

  def fake(config, workdir):
    log2 = round(math.log2(config.learning_rate[config.method]))
    calls.append((log2, config.train.epochs))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    rows = runs.read_metrics(path)
    with open(path, "a") as f:
      for epoch in range(len(rows) + 1, config.train.epochs + 1):
        if log2 >= 3 and epoch >= 2:
          raise train.TrainingDiverged("the train loss is nan")
        loss = (log2 - {1: 2, 2: 1, 3: 0}[epoch]) ** 2 / epoch + 1.0 / epoch
        row = {"epoch": epoch, "step": 3 * epoch, "heldout_loss": loss}
        row |= {"heldout_accuracy": 0.5, "test_accuracy": 0.25}
        f.write(json.dumps(row) + "\n")
    return {"state": None, "history": [], "stopped": None}

  return fake


class Killed(Exception):
  pass


def test_halving_search_writes_every_length_and_resumes_without_rerunning(tmp_path):
  spec = (
    f"{ROOT / 'configs' / 'table4.py'}:runlocal,search=halving,pairs=fc-mnist,methods=rbd,"
    "structure=srht,lo=-2,hi=4,stride=1,rungs=1+4+16"  # runlocal: lengths 1, 2, 3 epochs
  )
  kwargs = dict(
    seeds=[0],
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    allow_dirty=True,
  )
  calls = []
  fake = halving_trainer(calls)

  def dies_on_the_second_length(config, workdir):
    if config.train.epochs == 2 and any(e == 2 for _, e in calls):
      raise Killed  # the second trial of length 2: the search is killed midway
    return fake(config, workdir)

  with pytest.raises(Killed):
    reproduce.reproduce(spec, **kwargs, train_fn=dies_on_the_second_length)
  # Length 1: all seven; 2 best (1), then 1 and 3 (2): ceil(7 / 3) = 3 go on. Killed in 2^2's
  # trial at length 2, after 2^1's.
  assert calls == [(k, 1) for k in range(-2, 5)] + [(1, 2)]
  # --partial trains nothing and names the group its records do not finish.
  (partial_file,) = reproduce.reproduce(
    spec, **kwargs, train_fn=lambda *_: pytest.fail("trained"), partial=True
  )
  assert "- Partial: 0 of 1 groups searched; not yet: FC-MNIST RBD" in (
    pathlib.Path(partial_file).read_text().splitlines()
  )
  written = reproduce.reproduce(spec, **kwargs, train_fn=fake)
  # Resumed: no length-1 trial again, nor 2^1's finished length-2 trial. Length 2: 2^3
  # diverges, 2^1 (0.5) and 2^2 (1.0) go on (floor 2); length 3: 2^1 (0.667) beats 2^2.
  assert calls[8:] == [(2, 2), (3, 2), (1, 3), (2, 3)]
  name = os.path.basename(written[0])[: -len(".md")]
  assert [os.path.basename(p) for p in written] == [f"{name}.md", f"{name}_tuning_lengths.png"]
  text = (tmp_path / "results" / f"{name}.md").read_text()
  lines = text.splitlines()
  row = next(line for line in lines if line.startswith("| FC | MNIST | RBD | srht |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[4:8] == [
    "1",
    "3 steps (1 ep): 2 \u2192 6 steps (2 ep): 1 \u2192 9 steps (3 ep): 1",
    "1",
    "+0",
  ]
  assert cells[11] == "3 steps (1 ep): #2 of 7; 6 steps (2 ep): #1 of 3; 9 steps (3 ep): #1 of 2"
  # The loss table: every rate at every length it reached, the paper's rate marked.
  assert "| 1 (paper) | 2 | **0.5** | **0.6667** |" in lines
  assert "| 3 | 2 | diverged |  |" in lines
  assert "| -2 | 17 |  |  |" in lines
  assert "    ('fc', 'mnist', 'rbd', 250, 'srht'): 1,  # heldout_loss 0.6667" in lines
  # Every record holds every length the rate reached.
  records = runs.read_records(str(tmp_path / "results" / "runs" / name))
  epochs = sorted(len(r["metrics"]) for r in records.values())
  assert epochs == [1, 1, 1, 1, 1, 3, 3]  # 2^3 diverged in its second epoch
  # Without the workdirs the records rebuild the same file, nothing trains.
  count = len(calls)
  shutil.rmtree(tmp_path / "runs")
  reproduce.reproduce(spec, **kwargs, train_fn=fake)
  assert len(calls) == count


def test_a_group_whose_trial_another_process_trains_waits_and_no_run_trains_twice(
  tmp_path, monkeypatch
):
  """Two processes on one search: the second puts a group aside while the first trains
  its trial, searches the other group, then polls until that trial is done and reads it."""
  spec = (
    f"{ROOT / 'configs' / 'table4.py'}:runlocal,search=halving,pairs=fc-mnist,"
    "methods=sgd+rbd,lo=-2,hi=4,stride=1,rungs=1+4"
  )
  data = runs.DataLocations({}, None)
  kwargs = dict(
    seeds=[0],
    data=data,
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    allow_dirty=True,
  )
  module = reproduce.load_config_module(spec.split(":")[0])
  arg = spec.split(":", 1)[1]
  sgd_first = runs.make_run(
    module, arg, module.sweep(arg)[0], 0, data=data, workdir_root=str(tmp_path / "runs")
  )
  assert sgd_first.name == "FC-MNIST SGD 2^-2"
  other = workdir_lib.Workdir(sgd_first.workdir)  # the first process trains it now
  other.claim()
  calls = []
  fake = halving_trainer(calls)

  def claims_its_workdir(config, workdir):  # as train.train_and_evaluate does first
    held = workdir_lib.Workdir(workdir)
    held.claim()
    try:
      return fake(config, workdir)
    finally:
      held.release()

  waits = []

  def other_process_finishes(seconds):
    waits.append(seconds)
    other.release()
    runs.execute(sgd_first, fake)  # the first process ends the trial (status, record)

  monkeypatch.setattr(tune, "_wait_for_other_process", other_process_finishes)
  written = reproduce.reproduce(spec, **kwargs, train_fn=claims_its_workdir)
  assert waits == [tune.HELD_POLL_SECONDS]  # waited once, when only SGD was left
  # Runlocal lengths are 1 and 2 epochs; 7 rates, ceil(7 / 3) = 3 carried on.
  rbd = [(k, 1) for k in range(-2, 5)] + [(1, 2), (2, 2), (3, 2)]
  assert calls[:7] == rbd[:7]  # RBD's first length while SGD waits on its first trial
  # then RBD's carried trials, then (other process) SGD 2^-2, then the rest of SGD.
  assert calls[7:10] == rbd[7:] and calls[10] == (-2, 1)
  # SGD's other six rates at length 1 follow; 2^-2 is not trained again. 20 in all.
  assert calls[11:17] == [(k, 1) for k in range(-1, 5)] and len(calls) == 10 + 7 + 3
  # The file lists the groups in the sweep's order, whichever finished first.
  lines = pathlib.Path(written[0]).read_text().splitlines()
  rows = [line for line in lines if line.startswith("| FC | MNIST |")]
  assert [row.split("|")[3].strip() for row in rows] == ["SGD", "RBD"]
