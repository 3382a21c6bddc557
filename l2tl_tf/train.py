"""Trains one run in any mode: `python -m l2tl_tf.train --mode=l2tl ...`.

Thin by design: flags -> Config -> `loop.run_training`. Rerun the same command
to resume from the last checkpoint in --model_dir. On SIGTERM (preemption) it
saves a checkpoint after the current loop and exits with status 42.
"""

import sys

from absl import app

from l2tl_tf import flag_defs, loop

flag_defs.define_flags()


def main(argv):
  flag_defs.check_command_line(argv)
  result = loop.run_training(flag_defs.config_from_flags())
  if result.preempted:
    sys.exit(loop.PREEMPTED_EXIT_CODE)
  print(f'Finished {result.steps} steps in {result.seconds:.1f}s; outputs in {result.model_dir}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
