"""End to end: every mode trains, writes its outputs, resumes and warm-starts."""

import csv
import dataclasses
import glob
import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from l2tl_tf import loop, models, ranking, runs
from l2tl_tf.config import OptimizerConfig


def event_tags(model_dir):
  tags = set()
  for path in glob.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


def write_weights(path, weights):
  ranked = [ranking.RankedClass(i, f'class_{i}', w, 0.0) for i, w in enumerate(weights)]
  ranking.write_source_class_weights(ranked, str(path))
  return str(path / ranking.WEIGHTS_FILE)


@pytest.mark.parametrize('mode', ['scratch', 'finetune', 'l2tl', 'uniform', 'random', 'fixed'])
def test_each_mode_trains_checkpoints_and_logs(tiny_data, pretrained, tmp_path, mode):
  warm = '' if mode == 'scratch' else pretrained
  weights = write_weights(tmp_path / 'w', [1.0] * 8) if mode == 'fixed' else ''
  config = tiny_config(tiny_data, tmp_path / 'run', mode=mode, warm_start_from=warm,
                       fixed_source_weights=weights)
  tmp_path = tmp_path / 'run'
  lines = []
  result = loop.run_training(config, log=lines.append)
  assert result.steps == 6
  assert json.load(open(tmp_path / 'config.json'))['mode'] == mode
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-6')
  assert any('step 6/6' in line and 'steps/s' in line and 'ETA' in line for line in lines)
  tags = event_tags(str(tmp_path))
  assert {'loss/total', 'loss/target', 'learning_rate'} <= tags
  if config.mode.uses_policy:
    assert {'policy/reward', 'policy/baseline', 'policy/alpha', 'policy/lambda_entropy',
            'policy/expected_lambda'} <= tags
  assert os.path.exists(tmp_path / 'source_class_weights.csv') == (mode == 'l2tl')


def test_l2tl_writes_ranked_source_class_weights(tiny_data, pretrained, tmp_path):
  result = loop.run_training(tiny_config(tiny_data, tmp_path, warm_start_from=pretrained),
                             log=lambda _: None)
  with open(tmp_path / 'source_class_weights.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['source_class_id'] for r in rows] == [str(r.class_id) for r in result.ranked_classes]
  assert sorted(r['name'] for r in rows) == [f'class_{i}' for i in range(8)]
  expected = [float(r['expected_lambda']) for r in rows]
  assert expected == sorted(expected, reverse=True)
  assert all(0.0 <= float(r['std']) <= 0.5 for r in rows)


def test_pretrain_trains_on_the_source_only(tiny_data, pretrained):
  run = runs.restore_for_inference(pretrained)
  assert run.model.target_head is None and run.model.source_head is not None
  assert int(run.trainer.step.numpy()) == 6


def test_rerunning_the_command_resumes(tiny_data, tmp_path):
  first = tiny_config(tiny_data, tmp_path, mode='scratch', train_steps=6)
  loop.run_training(dataclasses.replace(first, train_steps=3), log=lambda _: None)
  lines = []
  result = loop.run_training(first, log=lines.append)
  assert lines[0].startswith('Resuming with changed settings: train_steps: 3 -> 6.')
  assert 'the rate jumps at the resumed step' in lines[0]
  assert 'Resuming' in lines[1] and 'from step 3' in lines[1]
  assert result.steps == 6
  assert sum(line.startswith('[scratch] step') for line in lines) == 1  # 3 steps remained
  again = []
  loop.run_training(first, log=again.append)  # the same command: nothing changed
  assert not any('changed settings' in line for line in again)


def test_switching_xla_on_resume_is_refused(tiny_data, tmp_path):
  """XLA's RNG draws other actions than the standard kernels: not the same run."""
  config = tiny_config(tiny_data, tmp_path, mode='scratch', train_steps=3)
  loop.run_training(config, log=lambda _: None)
  with pytest.raises(ValueError, match='jit_compile: False -> True'):
    loop.run_training(dataclasses.replace(config, jit_compile=True), log=lambda _: None)


def test_a_model_dir_of_another_run_is_refused(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path, mode='scratch', train_steps=3)
  loop.run_training(config, log=lambda _: None)
  other = dataclasses.replace(config, optimizer=OptimizerConfig(learning_rate=0.5,
                                                                warmup_steps=1))
  with pytest.raises(ValueError, match='optimizer.learning_rate: 0.05 -> 0.5'):
    loop.run_training(other, log=lambda _: None)


def test_bad_settings_fail_before_anything_is_written(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path / 'run', mode='l2tl')
  bad = dataclasses.replace(config, data=dataclasses.replace(config.data, source_train=''))
  with pytest.raises(ValueError, match='needs --source_train'):
    loop.run_training(bad)
  assert not os.path.exists(tmp_path / 'run')


def _fake_pretrained_checkpoint(path, source_classes):
  """A checkpoint shaped like a pretrain run's, with recognisable weights."""
  model = models.TransferModel('small_cnn', 16, 1, source_classes, 0)
  for variable in model.trainable_variables:
    variable.assign(tf.fill(variable.shape, 0.01))
  tf.train.Checkpoint(encoder=model.encoder, source_head=model.source_head).save(path)
  return model


def test_warm_start_loads_encoder_and_source_head(tiny_data, tmp_path):
  fake = _fake_pretrained_checkpoint(str(tmp_path / 'fake' / 'ckpt'), 8)
  config = tiny_config(tiny_data, tmp_path / 'run', warm_start_from=str(tmp_path / 'fake'),
                       train_steps=1, steps_per_loop=1, checkpoint_every=1,
                       optimizer=OptimizerConfig(learning_rate=0.0, warmup_steps=0,
                                                 weight_decay=0.0))
  loop.run_training(config, log=lambda _: None)
  run = runs.restore_for_inference(str(tmp_path / 'run'))
  for name in ('encoder', 'source_head'):
    expected = getattr(fake, name).trainable_variables
    actual = getattr(run.model, name).trainable_variables
    for e, a in zip(expected, actual):
      np.testing.assert_array_equal(a.numpy(), e.numpy(), err_msg=a.name)
  assert not np.allclose(run.model.target_head.kernel.numpy(), 0.01)


def test_warm_start_from_another_class_count_is_explained(tiny_data, tmp_path):
  _fake_pretrained_checkpoint(str(tmp_path / 'fake' / 'ckpt'), 5)
  config = tiny_config(tiny_data, tmp_path / 'run', warm_start_from=str(tmp_path / 'fake'))
  with pytest.raises(ValueError, match='Cannot warm start'):
    loop.run_training(config, log=lambda _: None)


def test_l2tl_runs_under_mirrored_strategy_with_batchnorm(tiny_data, pretrained, tmp_path,
                                                         mirrored):
  config = tiny_config(tiny_data, tmp_path, warm_start_from=pretrained)
  result = loop.run_training(config, strategy=mirrored, log=lambda _: None)
  assert result.steps == 6
  assert np.isfinite(result.final_metrics['loss/total'])
  assert 0.0 <= result.final_metrics['policy/reward'] <= 1.0


def test_fixed_weights_select_and_weight_the_source(tiny_data, pretrained, tmp_path):
  """Only class 0 has weight: kept candidates are class 0 first, the rest weigh 0."""
  weights = write_weights(tmp_path, [1.0] + [0.0] * 7)
  config = tiny_config(tiny_data, tmp_path / 'run', mode='pretrain', warm_start_from=pretrained,
                       fixed_source_weights=weights, steps_per_loop=6)
  result = loop.run_training(config, log=lambda _: None)
  # 20 candidates of 8 classes hold about 2.5 of class 0 for 4 kept places.
  assert 0.0 < result.final_metrics['policy/mean_lambda_kept'] < 1.0


@pytest.mark.parametrize('weights, message', [([0.5] * 7, 'every source class id'),
                                              ([2.0] + [0.5] * 7, 'outside')])
def test_bad_fixed_weights_are_explained(tiny_data, tmp_path, weights, message):
  path = write_weights(tmp_path, weights)
  config = tiny_config(tiny_data, tmp_path / 'run', mode='fixed', fixed_source_weights=path)
  with pytest.raises(ValueError, match=message):
    loop.run_training(config, log=lambda _: None)


def test_validation_curve_is_recorded_every_eval_interval(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path, mode='scratch', eval_every=3)
  result = loop.run_training(config, log=lambda _: None)
  curve = [(h['step'], h['eval/val_top1']) for h in result.history if 'eval/val_top1' in h]
  assert [step for step, _ in curve] == [3, 6]
  assert all(0.0 <= accuracy <= 1.0 for _, accuracy in curve)
  assert 'eval/val_top1' in event_tags(str(tmp_path))


class Crash(Exception):
  pass


def crash_before_saving(monkeypatch, crash_step):
  """Makes training die after `crash_step` ran, just before its checkpoint."""
  check = loop._stop_if_weights_diverged  # pylint: disable=protected-access

  def dying(run, step):
    if step == crash_step:
      raise Crash(f'died after step {step}')
    check(run, step)
  monkeypatch.setattr(loop, '_stop_if_weights_diverged', dying)


def all_state(model_dir):
  run = runs.restore_for_inference(model_dir)
  variables = list(run.model.encoder.variables) + list(run.model.source_head.variables)
  variables += list(run.model.target_head.variables) + list(run.trainer.optimizer.variables)
  variables += [run.policy.lambda_logits, run.policy.alpha_logits, run.policy.baseline]
  return [v.numpy() for v in variables + list(run.policy.optimizer.variables)]


@pytest.mark.parametrize('strategy_name, selection', [('default', 'global'),
                                                      ('mirrored', 'global'),
                                                      ('mirrored', 'per_replica')])
def test_a_run_that_crashed_resumes_to_the_uninterrupted_result(tiny_data, pretrained,
                                                                tmp_path, mirrored, monkeypatch,
                                                                strategy_name, selection):
  """Streams skip to the restored step and actions are keyed by step: exact resume.

  Under two replicas too: one pipeline then yields two batches a step, and
  the replicas' BatchNorm moving statistics must be one copy for the
  checkpoint to hold the whole state.
  """
  tf.config.experimental.enable_op_determinism()
  strategy = mirrored if strategy_name == 'mirrored' else None
  full = tiny_config(tiny_data, tmp_path / 'full', warm_start_from=pretrained,
                     selection=selection)
  loop.run_training(full, strategy=strategy, log=lambda _: None)
  crashed = dataclasses.replace(full, model_dir=str(tmp_path / 'crashed'))
  with monkeypatch.context() as patch, pytest.raises(Crash):
    crash_before_saving(patch, 6)
    loop.run_training(crashed, strategy=strategy, log=lambda _: None)
  assert tf.train.latest_checkpoint(crashed.model_dir).endswith('ckpt-3')
  loop.run_training(crashed, strategy=strategy, log=lambda _: None)
  for x, y in zip(all_state(full.model_dir), all_state(crashed.model_dir)):
    np.testing.assert_array_equal(x, y)


def test_validation_falls_on_every_interval_whatever_the_loop_size(tiny_data, tmp_path):
  """Loops are cut at validation steps too: --eval_every=2 with 3-step loops used to
  validate only where a loop happened to end on a multiple of 2."""
  config = tiny_config(tiny_data, tmp_path, mode='scratch', eval_every=2, steps_per_loop=3,
                       checkpoint_every=6)
  result = loop.run_training(config, log=lambda _: None)
  assert [h['step'] for h in result.history if 'eval/val_top1' in h] == [2, 4, 6]


def test_a_failed_validation_pass_keeps_the_loop_checkpoint(tiny_data, tmp_path, monkeypatch):
  """The due checkpoint is saved before validation, so a crash in it loses no training."""
  config = tiny_config(tiny_data, tmp_path, mode='scratch', eval_every=3)

  def broken_top1(*_):
    raise Crash('validation failed')
  monkeypatch.setattr(loop.evaluation, 'top1', broken_top1)
  with pytest.raises(Crash):
    loop.run_training(config, log=lambda _: None)
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-3')


def test_sigterm_after_the_save_decision_still_saves_where_it_says(tiny_data, tmp_path):
  """A SIGTERM landing in the progress line (after the loop's save decision) logged
  'checkpoint saved' for a step with no checkpoint, and the run stopped unsaved.
  It now saves that step at once (not a loop later: a preemption's grace is short)."""
  config = tiny_config(tiny_data, tmp_path / 'run', mode='scratch', train_steps=8,
                       steps_per_loop=2, checkpoint_every=100)
  lines = []

  def log(line):
    lines.append(line)
    if 'steps/s' in line and len([l for l in lines if 'steps/s' in l]) == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # during the first loop's progress line
  result = loop.run_training(config, log=log)
  assert result.preempted and result.steps == 2
  assert lines[-1].startswith('SIGTERM received: checkpoint saved at step 2.')
  assert tf.train.latest_checkpoint(config.model_dir).endswith('ckpt-2')
