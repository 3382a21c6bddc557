"""--policy_from: retraining with a learned policy, frozen (the paper's Sec. 5).

"L2TL is first trained on the training split using the reward from the
validation set. Then, the learned control variables are then used to train the
joint model on the training and validation examples." The replay samples
lambda and alpha_s from the learned run's policy every step and never updates
it, so it needs no reward set: its target may be train + validation.
"""

import dataclasses
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from l2tl_tf import loop, preflight, ranking, runs
from l2tl_tf.config import Config, Mode, PolicyConfig, validate


def _quiet(config):
  return loop.run_training(config, tf.distribute.get_strategy(), log=lambda _: None)


@pytest.fixture(scope='module')
def learned(tiny_data, pretrained, tmp_path_factory) -> Config:
  """An L2TL run whose policy moved away from its uniform start."""
  config = tiny_config(tiny_data, tmp_path_factory.mktemp('learned'), train_steps=9,
                       warm_start_from=pretrained, checkpoint_every=9,
                       policy=PolicyConfig(learning_rate=0.2))
  _quiet(config)
  return config


def _replay_config(learned_config: Config, model_dir, **overrides) -> Config:
  """The learned run's settings on all of target_train (no carve-out, no reward set)."""
  data = dataclasses.replace(learned_config.data, examples_per_class=0,
                             val_examples_per_class=0)
  values = dict(model_dir=str(model_dir), policy_from=learned_config.model_dir, data=data,
                train_steps=6, checkpoint_every=3)
  values.update(overrides)
  return dataclasses.replace(learned_config, **values)


def _policy(model_dir):
  run = runs.restore_for_inference(model_dir)
  return run.policy.lambda_logits.numpy(), run.policy.alpha_logits.numpy()


def test_a_replay_trains_on_the_learned_policy_and_never_updates_it(learned, tmp_path):
  learned_lambda, learned_alpha = _policy(learned.model_dir)
  assert np.ptp(learned_alpha) > 1e-3  # the learned run moved alpha's logits

  config = _replay_config(learned, tmp_path / 'replay')
  validate(config)  # no --target_val, no carve-out: a replay needs no reward set
  result = _quiet(config)

  replay_lambda, replay_alpha = _policy(config.model_dir)
  np.testing.assert_array_equal(replay_lambda, learned_lambda)
  np.testing.assert_array_equal(replay_alpha, learned_alpha)
  assert result.final_metrics['policy/reward'] == 0.0
  assert result.final_metrics['loss/source'] > 0.0  # the source term still trains
  # Its ranking is the learned run's (same logits, same seed).
  assert [r.class_id for r in result.ranked_classes] == [
      r.class_id for r in ranking.read_source_class_weights(learned.model_dir)]


@pytest.mark.parametrize('moved', [False, True], ids=['deleted', 'moved'])
def test_a_resumed_replay_reads_its_own_checkpoint_not_the_learned_run(learned, tmp_path,
                                                                       moved):
  source = tmp_path / 'learned_copy'
  shutil.copytree(learned.model_dir, source)
  config = _replay_config(learned, tmp_path / 'replay', policy_from=str(source))
  _quiet(dataclasses.replace(config, train_steps=3))
  expected = _policy(source)
  if moved:  # the flag may follow it: it is not read again
    source.rename(tmp_path / 'elsewhere')
    config = dataclasses.replace(config, policy_from=str(tmp_path / 'elsewhere'))
  else:  # gone, as after a preemption on another machine
    shutil.rmtree(source)
  result = _quiet(config)
  assert result.steps == 6
  for got, want in zip(_policy(config.model_dir), expected):
    np.testing.assert_array_equal(got, want)


def test_a_replay_on_two_replicas_keeps_the_policy_frozen(learned, tmp_path, mirrored):
  config = _replay_config(learned, tmp_path / 'replay')
  loop.run_training(config, mirrored, log=lambda _: None)
  for got, want in zip(_policy(config.model_dir), _policy(learned.model_dir)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('change, message', [
    (dict(mode=Mode.FINETUNE), '--policy_from replays a learned policy: --mode=finetune'),
    (dict(eval_every=3), 'no validation set'),
])
def test_settings_a_replay_cannot_take_are_refused(learned, tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    validate(_replay_config(learned, tmp_path, **change))


@pytest.mark.parametrize('change, message', [
    (dict(policy=PolicyConfig(num_lambda_levels=5)),
     r'with --num_lambda_levels=11 but this run has --num_lambda_levels=5'),
    # An l2tl policy replayed as uniform would drop the learned lambda.
    (dict(mode=Mode.UNIFORM), r'with --mode=l2tl but this run has --mode=uniform'),
    (dict(policy_from='{missing}'), 'is not a run directory'),
    (dict(policy_from='{pretrained}'), 'is a pretrain run: it learned no policy'),
])
def test_a_learned_run_that_does_not_fit_is_refused_before_training(learned, pretrained,
                                                                     tmp_path, change, message):
  if change.get('policy_from') == '{missing}':
    change['policy_from'] = str(tmp_path / 'nothing_here')
  if change.get('policy_from') == '{pretrained}':
    change['policy_from'] = pretrained
  config = _replay_config(learned, tmp_path / 'replay', **change)
  with pytest.raises(ValueError, match=message):
    preflight.check(config, tf.distribute.get_strategy())
  assert not (tmp_path / 'replay').exists()


def test_a_resume_cannot_switch_between_learning_and_replaying(learned, tmp_path):
  """Adding --policy_from to a learning run would freeze its policy; dropping it from a
  replay would start learning. Both are refused before anything is written."""
  learning = _replay_config(learned, tmp_path / 'learning', policy_from='',
                            data=learned.data, train_steps=3)
  _quiet(learning)
  with pytest.raises(ValueError, match="policy_from: '' -> "):
    _quiet(dataclasses.replace(learning, policy_from=learned.model_dir, train_steps=6))
  replay = _replay_config(learned, tmp_path / 'replay', train_steps=3)
  _quiet(replay)
  with pytest.raises(ValueError, match="policy_from: '.*' -> ''"):
    _quiet(dataclasses.replace(replay, policy_from='', data=learned.data, train_steps=6))
