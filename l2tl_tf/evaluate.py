"""Evaluates a run's target head: `python -m l2tl_tf.evaluate --model_dir=...`.

Reads the run's config.json, restores its latest checkpoint, evaluates the
test split by default and writes model_dir/metrics.json. `--crops=10` and
`--ensemble_checkpoints=30` give CheXpert's protocol (the paper's Table 7).
"""

import json

from absl import app, flags

from l2tl_tf import evaluation, flag_defs
from l2tl_tf.input_pipeline import EVAL_CROPS, EVAL_SPLITS

flag_defs.define_flags(['model_dir', 'target_test'])
flags.DEFINE_enum('split', 'test', EVAL_SPLITS, 'Target split to evaluate.')
flags.DEFINE_enum('crops', '1', [str(c) for c in EVAL_CROPS],
                  '1: one central crop. 10: corners and centre of the image resized to a '
                  'size / 0.875 square, and their mirror images, probabilities averaged '
                  '(CheXpert).')
flags.DEFINE_integer('ensemble_checkpoints', 1,
                     'Average the probabilities of the newest this many kept checkpoints '
                     '(the paper\'s CheXpert protocol: 30).')
FLAGS = flags.FLAGS


def main(argv):
  flag_defs.check_command_line(argv, required=('model_dir',))
  metrics = evaluation.evaluate(FLAGS.model_dir, FLAGS.split, FLAGS.target_test,
                                int(FLAGS.crops), FLAGS.ensemble_checkpoints)
  print(json.dumps(metrics, indent=2))


def run():
  app.run(main)


if __name__ == '__main__':
  run()
