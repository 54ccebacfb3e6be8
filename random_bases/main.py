"""Command line: ``python -m random_bases.main --config=configs/x.py[:arg] --workdir=DIR``.

Flags only; ``random_bases.train.train_and_evaluate`` does the work.
Override any field with ``--config.a.b=value`` (unknown fields are errors).
"""

import logging as python_logging

from absl import app, flags, logging
from ml_collections import config_flags

from random_bases import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops orbax's per-save INFO chatter so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(_QuietLibraries())
  logging.info("Config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
