"""Glue between a TFX Trainer's `fn_args` and an l2tl run.

The Trainer module file (`tfx_module/trainer_module.py`) stays a few lines of
delegation, as in the TFX penguin example; what it needs beyond calling the
library lives here, where it is tested without TFX installed:

  * `custom_config` is a dict of l2tl-train flag values (`{'mode': 'l2tl',
    'train_steps': 200, 'image_size': 64, ...}`), parsed by the same flag
    definitions as the command line, so names, types and defaults agree.
  * ExampleGen's train split is the target training set (D_T) and its eval
    split the target validation set (D'_T, the reward set); the source set
    (ImageNet-style TFRecords, or tfds:NAME/SPLIT) comes from `custom_config`.
  * The run directory (checkpoints, config.json, TensorBoard events) is the
    Trainer's `model_run_dir`.
"""

import os
from typing import Any, Mapping, Optional, Sequence

from absl import flags

from l2tl_tf import flag_defs
from l2tl_tf.config import Config

# Directory of the Trainer module file; TFX packages every .py in it.
TRAINER_MODULE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tfx_module')
TRAINER_MODULE_FILE = os.path.join(TRAINER_MODULE_DIR, 'trainer_module.py')

# TFX's Google Cloud extension reads its own keys from the Trainer's
# custom_config (ai_platform_training_args, ai_platform_enable_vertex, ...;
# tfx.extensions.google_cloud_ai_platform) and passes the whole dict on to
# run_fn: they are not l2tl-train flags.
TFX_EXTENSION_PREFIX = 'ai_platform_'

# Settings that the pipeline, not custom_config, decides.
_PIPELINE_OWNED = {
    'target_train': "ExampleGen's train split (fn_args.train_files)",
    'target_val': "ExampleGen's eval split (fn_args.eval_files)",
    'model_dir': "the Trainer's model_run_dir",
}


def flag_arguments(values: Mapping[str, Any]) -> list[str]:
  """Command-line arguments for l2tl-train flag values: bools as --x / --nox."""
  arguments = []
  for name, value in values.items():
    if isinstance(value, bool):
      arguments.append(f'--{name}' if value else f'--no{name}')
    else:
      arguments.append(f'--{name}={value}')
  return arguments


def config_from_trainer_args(train_files: Sequence[str], eval_files: Sequence[str],
                             custom_config: Optional[Mapping[str, Any]],
                             model_run_dir: str,
                             train_steps: Optional[int] = None) -> Config:
  """The Config of the run a TFX Trainer asks for.

  Args:
    train_files: fn_args.train_files, one file pattern (the train split).
    eval_files: fn_args.eval_files, one file pattern (the eval split).
    custom_config: l2tl-train flag values by flag name; None (the dict or a
      value) means defaults. Keys of TFX's Google Cloud extension
      (TFX_EXTENSION_PREFIX) are left to it.
    model_run_dir: fn_args.model_run_dir, used as --model_dir.
    train_steps: fn_args.train_steps (TrainArgs.num_steps), None when unset.

  Returns:
    A Config that `loop.run_training` validates and runs.

  Raises:
    ValueError: for an unknown flag or bad value in custom_config, a setting
      the pipeline owns, a split with more than one file pattern, or
      TrainArgs.num_steps that disagrees with custom_config's train_steps.
  """
  values = {name: value for name, value in (custom_config or {}).items()
            if value is not None and not name.startswith(TFX_EXTENSION_PREFIX)}
  for name, owner in _PIPELINE_OWNED.items():
    if name in values:
      raise ValueError(f'custom_config sets {name}={values[name]!r}, but {owner} decides it: '
                       f'remove {name} from custom_config.')
  if train_steps:
    if values.get('train_steps', train_steps) != train_steps:
      raise ValueError(f"custom_config train_steps={values['train_steps']} but "
                       f'TrainArgs(num_steps={train_steps}): set the step count in one place.')
    values['train_steps'] = train_steps
  values.update(target_train=_one_pattern(train_files, 'train_files'),
                target_val=_one_pattern(eval_files, 'eval_files'), model_dir=model_run_dir)
  try:
    return flag_defs.config_from_argv(['tfx_trainer', *flag_arguments(values)])
  except flags.Error as error:
    raise ValueError(f'Trainer custom_config: {error}') from error


def _one_pattern(patterns: Sequence[str], what: str) -> str:
  if len(patterns) != 1:
    raise ValueError(f'fn_args.{what} = {list(patterns)}: l2tl reads one file pattern per '
                     'split; give the Trainer examples with one train and one eval split.')
  return patterns[0]
