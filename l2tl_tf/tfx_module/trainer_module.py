"""TFX Trainer module file: `Trainer(module_file=...)` calls `run_fn`.

It only delegates to l2tl_tf (see `l2tl_tf.tfx_support`): fn_args become a
Config, `loop.run_training` trains it in fn_args.model_run_dir, and the
library's serving export writes the SavedModel (signatures serving_default on
encoded image bytes and serving_examples on serialized tf.Example) to
fn_args.serving_model_dir. TFX packages every .py file in this directory into
a wheel, so this directory holds this file alone. Keras, where needed, is
`import keras` (Keras 3): importing TFX sets TF_USE_LEGACY_KERAS=1, which turns
`tf.keras` into Keras 2 in the Trainer's process.
"""

from l2tl_tf import loop, serving, tfx_support


def run_fn(fn_args) -> None:
  """Trains the l2tl run that fn_args describe and exports it for serving."""
  config = tfx_support.config_from_trainer_args(
      fn_args.train_files, fn_args.eval_files, fn_args.custom_config,
      fn_args.model_run_dir, fn_args.train_steps)
  result = loop.run_training(config)
  if result.preempted:
    # A half-trained model must not reach the Pusher. TFX gives a retried
    # execution a new model_run_dir, so it starts over rather than resuming.
    raise RuntimeError(f'Training was stopped by SIGTERM at step {result.steps} of '
                       f'{config.train_steps}: nothing exported. The checkpoint is in '
                       f'{config.model_dir}.')
  serving.export_saved_model(config.model_dir, fn_args.serving_model_dir)
