"""Ranks source classes by learned lambda: `python -m l2tl_tf.rank --model_dir=...`.

Samples actions from the run's policy (10,000 as in the paper), writes
model_dir/source_class_weights.csv and prints the top classes.
"""

from absl import app, flags

from l2tl_tf import flag_defs, input_pipeline, ranking, runs

flag_defs.define_flags(['model_dir'])
flags.DEFINE_integer('num_samples', 10_000, 'Actions sampled from the policy.')
flags.DEFINE_integer('top', 20, 'How many top classes to print.')
FLAGS = flags.FLAGS


def main(argv):
  flag_defs.check_command_line(argv, required=('model_dir',))
  if FLAGS.num_samples < 1:  # 0 samples: NaN weights written over the ranking
    raise app.UsageError(f'--num_samples={FLAGS.num_samples} must be >= 1.')
  run = runs.restore_for_inference(FLAGS.model_dir)
  if run.policy is None or not run.config.mode.learns_lambda:
    # uniform, fixed and random runs carry untrained lambda logits: a ranking
    # of them would say nothing about the weights the run trained with.
    raise app.UsageError(f'{FLAGS.model_dir} is a {run.config.mode.value} run: it did not '
                         'learn lambda, so there is no ranking to write.')
  names = input_pipeline.source_class_names(run.config.data)
  ranked = ranking.rank_source_classes(run.policy, names, FLAGS.num_samples, run.config.seed)
  path = ranking.write_source_class_weights(ranked, FLAGS.model_dir)
  for row in ranked[:FLAGS.top]:
    print(f'{row.class_id:6d}  {row.name:<24s} {row.expected_lambda:.3f} +- {row.std:.3f}')
  print(f'Wrote {path}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
