"""Builds the accuracy benchmark's scenarios from the offline data.

  python data/build_bench.py                       # every scenario, split seed 0
  python data/build_bench.py --scenarios=digits,digits-planted --split_seeds=0,1

Each scenario goes to `{out_dir}/{scenario}/split{seed}/` with a
`scenario.json` naming its file patterns (see data/README.md). A scenario
whose `scenario.json` matches the requested parameters and inputs is skipped,
so rerunning is cheap. What goes into each scenario is defined in
`l2tl_tf.bench_data.SCENARIOS`.
"""

import os
import sys
import time

from absl import app, flags

from l2tl_tf import bench_data

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'bench-data')
_DEFAULTS = bench_data.BuildOptions()

flags.DEFINE_list('scenarios', list(bench_data.SCENARIOS),
                  f'Scenarios to build, of {", ".join(bench_data.SCENARIOS)}.')
flags.DEFINE_list('split_seeds', ['0'], 'Split seeds; one scenario directory per seed.')
flags.DEFINE_string('out_dir', os.path.join(REPO_ROOT, 'bench_data'), 'Root of the scenarios.')
flags.DEFINE_string('glyphs', os.path.join(SHARED_DATA, 'glyphs.npz'), 'Printed glyphs (.npz).')
flags.DEFINE_string('mnist', os.path.join(SHARED_DATA, 'mnist5k.npz'), 'MNIST-5k (.npz).')
flags.DEFINE_string('fashion_dir', bench_data.DEFAULT_FASHION_DIR,
                    'Folder of the four Fashion-MNIST IDX .gz files '
                    '(apt-get install dataset-fashion-mnist).')
flags.DEFINE_integer('pool_per_class', _DEFAULTS.pool_per_class,
                     'Target training-pool images per class (k is drawn from it).')
flags.DEFINE_integer('val_per_class', _DEFAULTS.val_per_class,
                     'Target validation (reward) images per class.')
flags.DEFINE_integer('max_source_per_class', _DEFAULTS.max_source_per_class,
                     'Cap on images per natural source class (0: keep all).')
flags.DEFINE_integer('max_planted_per_class', _DEFAULTS.max_planted_per_class,
                     'Cap on images per planted class (0: the whole half of the target set).')
flags.DEFINE_integer('source_shards', _DEFAULTS.source_shards,
                     'Shards of the source, pretrain and oracle datasets.')
flags.DEFINE_integer('target_shards', _DEFAULTS.target_shards, 'Shards of each target split.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.scenarios) - set(bench_data.SCENARIOS))
  if unknown:
    raise app.UsageError(f'Unknown scenarios {unknown}: pick from {list(bench_data.SCENARIOS)}.')
  options = bench_data.BuildOptions(
      pool_per_class=FLAGS.pool_per_class, val_per_class=FLAGS.val_per_class,
      max_source_per_class=FLAGS.max_source_per_class,
      max_planted_per_class=FLAGS.max_planted_per_class, source_shards=FLAGS.source_shards,
      target_shards=FLAGS.target_shards)
  raw = bench_data.RawFiles(FLAGS.glyphs, FLAGS.mnist, FLAGS.fashion_dir)
  needed = sorted({name for scenario in FLAGS.scenarios
                   for name in bench_data.SCENARIOS[scenario].raw_sets()})
  try:
    raw.check(needed)
  except FileNotFoundError as error:
    sys.exit(f'Error: {error}')
  started = time.time()
  for seed in [int(s) for s in FLAGS.split_seeds]:
    for scenario in FLAGS.scenarios:
      bench_data.build_scenario(scenario, FLAGS.out_dir, seed, raw, options)
  print(f'Done in {time.time() - started:.1f}s: {FLAGS.out_dir}')


if __name__ == '__main__':
  app.run(main)
