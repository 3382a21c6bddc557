"""Evaluates a run's target head: `python -m l2tl_tf.evaluate --model_dir=...`.

Reads the run's config.json, restores its latest checkpoint, evaluates the
test split by default and writes model_dir/metrics.json.
"""

import json

from absl import app, flags

from l2tl_tf import evaluation, flag_defs
from l2tl_tf.input_pipeline import EVAL_SPLITS

flag_defs.define_flags(['model_dir', 'target_test'])
flags.DEFINE_enum('split', 'test', EVAL_SPLITS, 'Target split to evaluate.')
FLAGS = flags.FLAGS


def main(argv):
  flag_defs.check_command_line(argv, required=('model_dir',))
  metrics = evaluation.evaluate(FLAGS.model_dir, FLAGS.split, FLAGS.target_test)
  print(json.dumps(metrics, indent=2))


def run():
  app.run(main)


if __name__ == '__main__':
  run()
