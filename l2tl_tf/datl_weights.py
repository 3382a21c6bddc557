"""Writes DATL's P_T(y)/P_S(y) source class weights: `python -m l2tl_tf.datl_weights`.

Takes the training flags (the target and source specs, --examples_per_class,
--seed) plus --warm_start_from=<pretrain run>, and writes
<--model_dir>/source_class_weights.csv for `--fixed_source_weights`.
"""

from absl import app

from l2tl_tf import datl, flag_defs

flag_defs.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flag_defs.config_from_flags()
  if not config.warm_start_from or not config.model_dir:
    raise app.UsageError('--warm_start_from (the pretrain run) and --model_dir are required.')
  print(f'Wrote {datl.write_datl_weights(config.warm_start_from, config, config.model_dir)}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
