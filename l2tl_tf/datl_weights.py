"""Writes DATL's P_T(y)/P_S(y) source class weights: `python -m l2tl_tf.datl_weights`.

Takes the training flags (the target and source specs, --examples_per_class,
--seed) plus --warm_start_from=<pretrain run>, and writes
<--model_dir>/source_class_weights.csv for `--fixed_source_weights`.
"""

from absl import app

from l2tl_tf import datl, flag_defs

flag_defs.define_flags()


def main(argv):
  flag_defs.check_command_line(argv, required=('warm_start_from', 'model_dir'))
  config = flag_defs.config_from_flags()
  print(f'Wrote {datl.write_datl_weights(config.warm_start_from, config, config.model_dir)}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
