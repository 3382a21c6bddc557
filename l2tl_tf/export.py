"""Exports a run as a SavedModel: `python -m l2tl_tf.export --model_dir=...`.

Signatures: `serving_default` (encoded image bytes -> probabilities) and
`serving_examples` (serialized tf.Example -> probabilities).
"""

import os

from absl import app, flags

from l2tl_tf import flag_defs, serving

flag_defs.define_flags(['model_dir'])
flags.DEFINE_string('export_dir', '', 'Where to write the SavedModel (default model_dir/export).')
FLAGS = flags.FLAGS


def main(argv):
  flag_defs.check_command_line(argv, required=('model_dir',))
  export_dir = FLAGS.export_dir or os.path.join(FLAGS.model_dir, 'export')
  print(f'SavedModel written to {serving.export_saved_model(FLAGS.model_dir, export_dir)}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
