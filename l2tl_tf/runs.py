"""A run directory: its config, the objects it trains, and their checkpoints.

Training, evaluation, export and ranking all rebuild a run from
`model_dir/config.json` and its latest checkpoint through this file, so they
agree on what a checkpoint holds.
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from l2tl_tf import config as config_lib
from l2tl_tf import files
from l2tl_tf.config import Config
from l2tl_tf.models import TransferModel
from l2tl_tf.policy import Policy
from l2tl_tf.strategy import ChiefCheckpointManager
from l2tl_tf.trainer import Trainer

CONFIG_FILE = 'config.json'


@dataclasses.dataclass
class Run:
  """Everything a checkpoint holds, built under one strategy's scope."""
  config: Config
  strategy: tf.distribute.Strategy
  model: TransferModel
  policy: Optional[Policy]
  trainer: Trainer
  checkpoint: tf.train.Checkpoint
  manager: ChiefCheckpointManager


def load_config(model_dir: str) -> Config:
  path = os.path.join(model_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise ValueError(f'{path} does not exist: --model_dir must be a directory written by '
                     'l2tl-train.')
  with tf.io.gfile.GFile(path) as f:
    return Config.from_dict(json.load(f))


def check_run_dir(config: Config) -> None:
  """Refuses a model_dir holding a run with other settings; writes nothing.

  Rerunning the same command resumes; settings in RESUMABLE_CHANGES (the
  step budget, logging cadence, strategy) may change between attempts. A
  directory whose run failed before its first checkpoint holds nothing to
  resume, so a retry with corrected settings starts over there.
  """
  blocking = {k: (old, new) for k, (old, new) in setting_changes(config).items()
              if not config_lib.resumable_change(k, old, new)}
  if blocking and tf.train.latest_checkpoint(config.model_dir):
    listed = '; '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in sorted(blocking.items()))
    raise ValueError(f'--model_dir={config.model_dir} holds a run with other settings '
                     f'({listed}). Use a new --model_dir, or rerun with the same flags '
                     'to resume.')


def setting_changes(config: Config) -> dict:
  """{setting: (old, new)} against the run already in model_dir; {} for a fresh one."""
  if not tf.io.gfile.exists(os.path.join(config.model_dir, CONFIG_FILE)):
    return {}
  return _differences(load_config(config.model_dir).to_dict(), config.to_dict())


def describe_changes(changes: dict, resumes: bool = True) -> str:
  """The log line for a run resumed (or, without a checkpoint, restarted) with changes."""
  listed = '; '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in sorted(changes.items()))
  if not resumes:
    return (f'The run in this --model_dir stopped before its first checkpoint: starting over '
            f'with changed settings: {listed}.')
  line = f'Resuming with changed settings: {listed}.'
  if 'train_steps' in changes:
    line += (' The learning rate follows the new --train_steps from here: its cosine decay '
             'now spans the new length, so the rate jumps at the resumed step.')
  return line


def prepare_run_dir(config: Config) -> None:
  """Writes config.json first, after `check_run_dir`."""
  check_run_dir(config)
  tf.io.gfile.makedirs(config.model_dir)
  files.write_text_atomically(os.path.join(config.model_dir, CONFIG_FILE), config.to_json())


def _differences(old: dict, new: dict, prefix: str = '') -> dict:
  found = {}
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      found.update(_differences(a, b, f'{prefix}{key}.'))
    elif a != b:
      found[f'{prefix}{key}'] = (a, b)
  return found


def build(config: Config, strategy: tf.distribute.Strategy,
          fixed_lambda: Optional[np.ndarray] = None) -> Run:
  """Creates model, policy, optimizers and the checkpoint under `strategy`.

  `fixed_lambda` (lambda per source class) replaces the policy's lambda in
  training; inference needs none.
  """
  data = config.data
  source_classes = data.source_num_classes if config.mode.uses_source else 0
  target_classes = data.target_num_classes if config.mode.uses_target else 0
  weights = starting_weights(config)
  with strategy.scope():
    model = TransferModel(config.model.backbone, data.image_size, data.num_channels,
                          source_classes, target_classes, weights, config.precision)
    policy = (Policy(data.source_num_classes, config.policy, config.seed)
              if config.mode.uses_policy else None)
    trainer = Trainer(config, strategy, model, policy, fixed_lambda)
  items = dict(model.checkpoint_items(), optimizer=trainer.optimizer, step=trainer.step)
  if policy is not None:
    items['policy'] = policy
  checkpoint = tf.train.Checkpoint(**items)
  manager = ChiefCheckpointManager(checkpoint, config.model_dir, strategy,
                                  max_to_keep=config.keep_checkpoints)
  return Run(config, strategy, model, policy, trainer, checkpoint, manager)


def starting_weights(config: Config) -> str:
  """The --backbone_weights file a run loads: none when it resumes.

  A resumed run restores every weight from its checkpoint, so the starting
  file is not read (it may have stayed on a preempted VM's disk).
  """
  return '' if tf.train.latest_checkpoint(config.model_dir) else config.model.backbone_weights


def restore_latest(run: Run) -> bool:
  """Restores the newest checkpoint of the run; False when there is none."""
  if not run.manager.latest_checkpoint:
    return False
  status = run.checkpoint.restore(run.manager.latest_checkpoint)
  try:
    status.assert_existing_objects_matched()
  except AssertionError as error:
    # For example a first-order credit run with Adam checkpointed before
    # 2026-11-27, whose lambda optimizer state had another form.
    raise ValueError(
        f'{run.manager.latest_checkpoint} lacks state this run keeps '
        f'({str(error).splitlines()[0][:200]}): '
        'it was written by an older l2tl_tf. Resume it with that version, or train in a '
        'new --model_dir.') from error
  return True


def resolve_checkpoint(path: str) -> str:
  """A checkpoint prefix from a run directory or a prefix."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if not latest:
      raise ValueError(f'--warm_start_from={path} is a directory with no checkpoint: '
                       'train that run first, or give a checkpoint prefix.')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'--warm_start_from={path} is neither a run directory nor a checkpoint: '
                     'give a run directory or a prefix such as RUN_DIR/ckpt-20000.')
  return path


def warm_start(run: Run, path: str) -> str:
  """Loads g (and h_S when this run has one) from a pretrained checkpoint.

  The target head and both optimizers start fresh, as in fine-tuning.
  """
  return load_pretrained(run.model, run.config, path)


def load_pretrained(model: TransferModel, config: Config, path: str) -> str:
  """Reads g (and h_S when `model` has one) from the checkpoint at `path`.

  Returns:
    The checkpoint prefix read.

  Raises:
    ValueError: when the checkpoint lacks a part or a shape differs; it names
      the settings that differ when the pretrained run's config.json is
      beside the checkpoint.
  """
  prefix = resolve_checkpoint(path)
  parts = {'encoder': model.encoder}
  if model.source_head is not None:
    parts['source_head'] = model.source_head
  try:
    tf.train.Checkpoint(**parts).read(prefix).assert_existing_objects_matched().expect_partial()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
    details = str(error).strip().splitlines()[0][:300]
    raise ValueError(
        f'Cannot warm start {sorted(parts)} from --warm_start_from={path} ({prefix}): '
        f'{_pretrained_mismatch(config, prefix, "source_head" in parts)} Details: {details}'
    ) from error
  return prefix


def _pretrained_mismatch(config: Config, prefix: str, with_source_head: bool) -> str:
  """Which settings that shape g and h_S differ from the pretrained run's."""
  ours = _shaping_settings(config, with_source_head)
  listed = ' '.join(f'--{key}={value}' for key, value in ours.items())
  directory = os.path.dirname(prefix)
  if tf.io.gfile.exists(os.path.join(directory, CONFIG_FILE)):
    theirs = _shaping_settings(load_config(directory), with_source_head)
    differ = ' '.join(f'--{key}={value}' for key, value in theirs.items() if value != ours[key])
    if differ:
      return (f'that run was trained with {differ} but this run has {listed}. Warm start '
              'from a run with the same settings, or drop --warm_start_from.')
  return (f'its variables do not fit this run ({listed}): it comes from another backbone, '
          'channel count or source class count. Warm start from a checkpoint of the same '
          'architecture, or drop --warm_start_from.')


def _shaping_settings(config: Config, with_source_head: bool) -> dict:
  """The settings that shape the variables of g (and h_S), by flag name."""
  settings = {'backbone': config.model.backbone, 'num_channels': config.data.num_channels}
  if with_source_head:
    settings['source_num_classes'] = config.data.source_num_classes
  return settings


def load_policy(policy: Policy, path: str) -> str:
  """Reads a learned run's lambda and alpha_s logits into `policy`; returns the prefix.

  Only the logits: the baseline and the optimizers' state belong to learning,
  which a replay does not do.
  """
  if not tf.io.gfile.isdir(path) or not tf.train.latest_checkpoint(path):
    raise ValueError(f'--policy_from={path} has no checkpoint: give the directory of a '
                     'trained L2TL run.')
  prefix = tf.train.latest_checkpoint(path)
  logits = tf.Module()
  logits.lambda_logits, logits.alpha_logits = policy.lambda_logits, policy.alpha_logits
  try:
    status = tf.train.Checkpoint(policy=logits).read(prefix).expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
    raise ValueError(f'Cannot read a policy from --policy_from={path} ({prefix}): '
                     f'{str(error).strip().splitlines()[0][:300]}') from error
  return prefix


def restore_for_inference(model_dir: str, target_test: str = '') -> Run:
  """Rebuilds a run under the default strategy from its latest checkpoint.

  Args:
    model_dir: a run directory written by training.
    target_test: replaces the run's --target_test when given.
  """
  config = load_config(model_dir)
  if target_test:
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, target_test=target_test))
  # The checkpoint holds every weight: the starting weights file is not needed
  # (and may be on another machine).
  config = dataclasses.replace(
      config, model=dataclasses.replace(config.model, backbone_weights=''))
  run = build(config, tf.distribute.get_strategy())
  if not run.manager.latest_checkpoint:
    raise ValueError(f'--model_dir={model_dir} has no checkpoint yet: train first.')
  run.checkpoint.restore(run.manager.latest_checkpoint).expect_partial()
  return run
