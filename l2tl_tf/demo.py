"""The embedded demo: `python -m l2tl_tf.demo` (needs only `pip install .[demo]`).

Builds a glyphs -> handwritten-digits benchmark from package data, runs
scratch, fine-tuning and L2TL at 10 examples per class, prints their test
accuracies and L2TL's top source classes, and exports the L2TL model.
Rerunning resumes finished and interrupted runs from their checkpoints.
Its flags are its own (it is never imported beside `l2tl_tf.train`).
"""

import dataclasses
import sys

from absl import app, flags

from l2tl_tf import demo_benchmark, loop

_DEFAULTS = demo_benchmark.DemoSettings()
_HELP = {
    'out_dir': 'Where the data and the runs go.',
    'seed': 'Seed for the data split, subsets and training.',
    'examples_per_class': 'k: target training examples per class.',
    'val_examples_per_class': 'Target validation (reward) examples per class.',
    'images_per_class': 'Rendered images per source class.',
    'test_per_class': 'Target test images per class.',
    'pretrain_steps': 'Source pretraining steps.',
    'pretrain_batch_size': 'Source pretraining batch size.',
    'transfer_steps': 'Steps of each target run.',
    'batch_size': 'B_T (= B_S; B_P = 4 B_T).',
    'learning_rate': 'Peak SGD learning rate.',
    'source_batch_multiplier': 'M_S.',
    'policy_learning_rate': 'Adam learning rate of the L2TL policy.',
    'num_lambda_levels': 'n: lambda levels.',
}
for _field in dataclasses.fields(demo_benchmark.DemoSettings):
  _default = getattr(_DEFAULTS, _field.name)
  _define = {int: flags.DEFINE_integer, float: flags.DEFINE_float,
             str: flags.DEFINE_string}[type(_default)]
  _define(_field.name, _default, _HELP[_field.name])
flags.DEFINE_bool('dry_run', False, 'Print the resolved settings and exit without training.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  settings = demo_benchmark.DemoSettings(**{
      f.name: FLAGS[f.name].value for f in dataclasses.fields(demo_benchmark.DemoSettings)})
  if FLAGS.dry_run:
    print(settings)
    return
  try:
    report = demo_benchmark.run_demo(settings)
  except demo_benchmark.Preempted as stopped:
    print(stopped, flush=True)
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  print()
  print(demo_benchmark.format_report(report, settings))


def run():
  app.run(main)


if __name__ == '__main__':
  run()
