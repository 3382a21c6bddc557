"""Step functions: selection, weight normalisation, AUC, and replica equivalence."""

import dataclasses
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import QUIET_ENV, binary_command, tiny_config, tiny_flagfile
from l2tl_tf import input_pipeline, models, runs, strategy as strategy_lib
from l2tl_tf import trainer as trainer_lib
from l2tl_tf.config import Mode, ModelConfig, OptimizerConfig
from l2tl_tf.trainer import mean_auc, normalise_source_weights, select_top_weighted


def test_top_weighted_selection_keeps_the_highest_weights():
  weights = tf.constant([0.1, 0.9, 0.0, 0.5, 0.7, 0.2])
  kept = np.sort(select_top_weighted(weights, 3).numpy())
  np.testing.assert_array_equal(kept, [1, 3, 4])


def test_top_weighted_selection_with_ties_keeps_k_examples():
  kept = select_top_weighted(tf.zeros([10]), 4).numpy()
  assert len(set(kept.tolist())) == 4


def test_normalisation_none_keeps_lambda():
  weights = tf.constant([0.0, 0.5, 1.0])
  np.testing.assert_allclose(normalise_source_weights(weights, 'none'), weights)


def test_normalisation_mean_one_rescales_to_mean_one():
  normalised = normalise_source_weights(tf.constant([0.0, 0.5, 1.0]), 'mean_one').numpy()
  np.testing.assert_allclose(normalised.mean(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(normalised, [0.0, 1.0, 2.0], rtol=1e-6)


def test_normalisation_of_all_zero_weights_is_zero_not_nan():
  normalised = normalise_source_weights(tf.zeros([4]), 'mean_one').numpy()
  np.testing.assert_array_equal(normalised, np.zeros(4))


def test_mean_auc_matches_pairwise_counting():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 40)
  scores = rng.random((40, 3)).astype(np.float32)
  aucs = []
  for cls in range(3):
    pos, neg = scores[labels == cls, cls], scores[labels != cls, cls]
    aucs.append(np.mean(pos[:, None] > neg[None, :]))
  np.testing.assert_allclose(mean_auc(tf.constant(labels, tf.int32), scores, 3), np.mean(aucs),
                             rtol=1e-5)


def test_mean_auc_is_one_for_perfect_scores():
  labels = tf.constant([0, 1, 2, 1])
  assert float(mean_auc(labels, tf.one_hot(labels, 3), 3)) == pytest.approx(1.0)


def _dense_encoder(image_size, num_channels, weights):
  """A BatchNorm-free encoder: per-replica BN statistics would differ by design."""
  del weights
  inputs = keras.Input((image_size, image_size, num_channels))
  x = keras.layers.Flatten()(inputs)
  x = keras.layers.Dense(16, activation='relu')(x)
  return keras.Model(inputs, x)


def _run_steps(config, strategy, num_steps):
  keras.utils.set_random_seed(0)
  run = runs.build(config, strategy)
  subsets = input_pipeline.target_subsets(config)
  makers = {
      'source': lambda ctx: input_pipeline.source_dataset(config, ctx),
      'target': lambda ctx: input_pipeline.target_train_dataset(config, subsets, ctx),
      'reward': lambda ctx: input_pipeline.reward_dataset(config, subsets, ctx),
  }
  iterators = {k: iter(strategy.distribute_datasets_from_function(f)) for k, f in makers.items()}
  metrics = run.trainer.train_loop(iterators, tf.constant(num_steps))
  actions = run.policy.sample(run.policy.step_seed(tf.constant(0, tf.int64)))
  return run, {k: float(v) for k, v in metrics.items()}, actions


@pytest.mark.parametrize('scaling', ['none', 'target_ratio'])
def test_default_and_mirrored_steps_agree(tiny_data, tmp_path, monkeypatch, mirrored, scaling):
  """Two replicas on two logical CPUs reproduce the single-device update.

  M_S = 1 so that no top-B_S selection happens: per-replica selection picks the
  top of each replica's candidates, which differs from the global top by design.
  With target_ratio scaling, both replicas must apply the global batch's factor.
  """
  monkeypatch.setitem(models.ENCODERS, 'dense_test', _dense_encoder)
  monkeypatch.setitem(models.MIN_IMAGE_SIZE, 'dense_test', 1)
  config = tiny_config(tiny_data, tmp_path, source_batch_multiplier=1,
                       model=ModelConfig(backbone='dense_test'),
                       optimizer=OptimizerConfig(learning_rate=0.05, warmup_steps=1,
                                                 source_loss_scaling=scaling))
  assert mirrored.num_replicas_in_sync == 2
  single_run, single_metrics, single_actions = _run_steps(config, tf.distribute.get_strategy(), 2)
  mirrored_run, mirrored_metrics, mirrored_actions = _run_steps(config, mirrored, 2)

  np.testing.assert_array_equal(single_actions.lambda_levels, mirrored_actions.lambda_levels)
  assert int(single_actions.alpha_level) == int(mirrored_actions.alpha_level)
  for name in ('loss/source', 'loss/target', 'loss/source_scale', 'policy/reward',
               'policy/baseline'):
    assert mirrored_metrics[name] == pytest.approx(single_metrics[name], rel=1e-4, abs=1e-6)
  assert (single_metrics['loss/source_scale'] == 1.0) == (scaling == 'none')
  single_vars = single_run.model.trainable_variables
  mirrored_vars = mirrored_run.model.trainable_variables
  assert len(single_vars) == len(mirrored_vars)
  for a, b in zip(single_vars, mirrored_vars):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.name)
  np.testing.assert_allclose(single_run.policy.lambda_logits.numpy(),
                             mirrored_run.policy.lambda_logits.numpy(), atol=1e-6)
  np.testing.assert_allclose(single_run.policy.alpha_logits.numpy(),
                             mirrored_run.policy.alpha_logits.numpy(), atol=1e-6)
  assert int(mirrored_run.trainer.step.numpy()) == 2


def _variables(run):
  return [v.numpy() for v in run.model.trainable_variables] + [
      run.policy.lambda_logits.numpy(), run.policy.alpha_logits.numpy()]


def test_global_selection_on_two_replicas_equals_one_device(tiny_data, tmp_path, monkeypatch,
                                                            mirrored):
  """--selection=global keeps what one device keeps; per-replica keeps something else."""
  monkeypatch.setitem(models.ENCODERS, 'dense_test', _dense_encoder)
  monkeypatch.setitem(models.MIN_IMAGE_SIZE, 'dense_test', 1)
  config = tiny_config(tiny_data, tmp_path, selection='global',
                       model=ModelConfig(backbone='dense_test'))
  assert config.source_candidate_batch_size == 5 * config.source_batch_size
  single_run, single_metrics, _ = _run_steps(config, tf.distribute.get_strategy(), 3)
  global_run, global_metrics, _ = _run_steps(config, mirrored, 3)
  local_run, local_metrics, _ = _run_steps(
      dataclasses.replace(config, selection='per_replica'), mirrored, 3)

  assert global_metrics['loss/source'] == pytest.approx(single_metrics['loss/source'],
                                                        rel=1e-4)
  assert global_metrics['policy/mean_lambda_kept'] == pytest.approx(
      single_metrics['policy/mean_lambda_kept'], abs=1e-6)
  for a, b in zip(_variables(single_run), _variables(global_run)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Each replica's own top B_S/R of a different candidate draw: another batch.
  assert local_metrics['loss/source'] != pytest.approx(single_metrics['loss/source'], rel=1e-3)


def test_decoding_after_selection_trains_exactly_as_decoding_everything(tiny_data, tmp_path):
  """Same kept images, same seeds: the two source_decode settings give equal runs."""
  results = {}
  for decode in ('pipeline', 'after_select'):
    config = tiny_config(tiny_data, tmp_path / decode, source_decode=decode)
    assert config.decodes_after_select == (decode == 'after_select')
    run, metrics, _ = _run_steps(config, tf.distribute.get_strategy(), 3)
    results[decode] = (_variables(run), metrics)
  for a, b in zip(results['pipeline'][0], results['after_select'][0]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert results['pipeline'][1]['loss/source'] == pytest.approx(
      results['after_select'][1]['loss/source'], rel=1e-5)


def test_bfloat16_option_trains_with_float32_variables(tiny_data, tmp_path):
  """mixed_bfloat16: bfloat16 encoder compute, float32 heads, losses and variables."""
  config = tiny_config(tiny_data, tmp_path, precision='mixed_bfloat16')
  run, metrics, _ = _run_steps(config, tf.distribute.get_strategy(), 3)
  assert all(np.isfinite(value) for value in metrics.values())
  assert metrics['loss/source'] > 0 and metrics['loss/target'] > 0
  assert all(v.dtype == tf.float32 for v in run.model.trainable_variables)
  assert run.model.encoder.get_layer('conv0_0').compute_dtype == 'bfloat16'
  assert run.model.target_head.compute_dtype == 'float32'
  assert int(run.trainer.step.numpy()) == 3


# The bfloat16 case also compiles target_ratio's all-reduce of the step's losses.
@pytest.mark.parametrize('precision, extra', [
    ('float32', ()), ('mixed_bfloat16', ('--source_loss_scaling=target_ratio',))])
def test_xla_option_trains_from_the_command_line(tiny_data, tmp_path, precision, extra):
  """--jit_compile trains (in a fresh process: op determinism, which other tests
  switch on for the whole process, has no XLA kernel for MaxPool's gradient)."""
  flagfile = tiny_flagfile(tiny_data, tmp_path / 'tiny.flags')
  result = subprocess.run(
      binary_command('train', f'--flagfile={flagfile}', '--mode=l2tl', '--jit_compile',
                     f'--precision={precision}', *extra, f'--model_dir={tmp_path / "run"}'),
      env=QUIET_ENV, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Finished 4 steps' in result.stdout
  losses = [float(line.split('loss ')[1].split()[0])
            for line in result.stdout.splitlines() if ' loss ' in line]
  assert len(losses) == 2 and all(np.isfinite(losses)), result.stdout


def test_get_strategy_builds_each_local_strategy(mirrored):
  assert strategy_lib.get_strategy('default').num_replicas_in_sync == 1
  assert strategy_lib.get_strategy('one_device').num_replicas_in_sync == 1
  assert isinstance(mirrored, tf.distribute.MirroredStrategy)
  assert mirrored.num_replicas_in_sync == 2  # one replica per logical CPU


@pytest.mark.parametrize('name, tpu, message', [('bogus', '', 'unknown'),
                                                ('tpu', '', 'needs --tpu')])
def test_get_strategy_errors_name_the_fix(name, tpu, message):
  with pytest.raises(ValueError, match=message):
    strategy_lib.get_strategy(name, tpu)


@pytest.mark.parametrize('signal', ['ce', 'ncm'])
def test_first_order_credit_runs_and_moves_only_candidate_classes(tiny_data, tmp_path, signal):
  """lambda_credit=first_order: standardised per-class scores drive lambda (SGD)."""
  config = tiny_config(tiny_data, tmp_path)
  config = dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, lambda_credit='first_order', credit_signal=signal,
      credit_estimator='expected', credit_optimizer='sgd', credit_learning_rate=0.1))
  run, metrics, _ = _run_steps(config, tf.distribute.get_strategy(), 2)
  assert np.isfinite(metrics['policy/reward'])
  logits = run.policy.lambda_logits.numpy()
  assert np.all(np.isfinite(logits)) and not np.allclose(logits, 0.0)


@pytest.mark.parametrize('signal, alpha_credit', [('ce', 'reward'), ('ncm', 'reward'),
                                                  ('ncm', 'first_order')])
def test_first_order_credit_default_and_mirrored_agree(tiny_data, tmp_path, monkeypatch, mirrored,
                                                       signal, alpha_credit):
  """Two replicas give every class (and alpha_s, with first-order alpha
  credit) the credit one device gives it.

  For 'ncm' that needs the class means of the whole global target batch: each
  replica's own half holds only some of the classes, with fewer examples each.
  """
  monkeypatch.setitem(models.ENCODERS, 'dense_test', _dense_encoder)
  monkeypatch.setitem(models.MIN_IMAGE_SIZE, 'dense_test', 1)
  config = tiny_config(tiny_data, tmp_path, source_batch_multiplier=1,
                       model=ModelConfig(backbone='dense_test'),
                       optimizer=OptimizerConfig(learning_rate=0.05, warmup_steps=1))
  config = dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, lambda_credit='first_order', credit_signal=signal,
      alpha_credit=alpha_credit, credit_estimator='expected', credit_optimizer='sgd',
      credit_learning_rate=0.1))
  single_run, _, _ = _run_steps(config, tf.distribute.get_strategy(), 2)
  mirrored_run, _, _ = _run_steps(config, mirrored, 2)
  moved = ['lambda_logits'] + (['alpha_logits'] if alpha_credit == 'first_order' else [])
  for name in ('lambda_logits', 'alpha_logits'):
    single = getattr(single_run.policy, name).numpy()
    if name in moved:
      assert not np.allclose(single, 0.0), name
    np.testing.assert_allclose(getattr(mirrored_run.policy, name).numpy(), single, atol=1e-5,
                               err_msg=name)
  for a, b in zip(single_run.model.trainable_variables, mirrored_run.model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.name)


@pytest.mark.parametrize('strategy_name', ['default', 'mirrored'])
def test_first_order_alpha_credit_moves_alpha_by_natural_gradient_steps(tiny_data, tmp_path,
                                                                       mirrored, strategy_name):
  """alpha_credit=first_order: alpha's logits stay affine in the levels (no sampled action)."""
  strategy = mirrored if strategy_name == 'mirrored' else tf.distribute.get_strategy()
  config = tiny_config(tiny_data, tmp_path, batch_size=4 * strategy.num_replicas_in_sync)
  config = dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, lambda_credit='first_order', alpha_credit='first_order',
      num_alpha_levels=7, credit_estimator='expected', credit_optimizer='sgd',
      credit_learning_rate=0.1))
  run, metrics, _ = _run_steps(config, strategy, 3)
  assert np.isfinite(metrics['policy/reward'])
  logits = strategy.experimental_local_results(run.policy.alpha_logits)
  for replica in logits[1:]:
    np.testing.assert_array_equal(replica.numpy(), logits[0].numpy())
  logits = logits[0].numpy()
  assert not np.allclose(logits, 0.0)
  np.testing.assert_allclose(np.diff(logits, 2), 0.0, atol=1e-5)
  assert np.isfinite(run.policy.alpha_credit_square.numpy())


@pytest.mark.parametrize('bn_statistics', ['all', 'target'])
def test_replicas_keep_one_copy_of_the_moving_statistics(tiny_data, tmp_path, mirrored,
                                                         bn_statistics):
  """Each replica's training passes move its own copy of BatchNorm's moving
  statistics; the step averages them, so every replica infers with one model
  (the reward, the credit) and the checkpoint holds that model."""
  config = tiny_config(tiny_data, tmp_path, source_batch_multiplier=1,
                       model=ModelConfig(backbone='small_cnn', bn_statistics=bn_statistics))
  run, _, _ = _run_steps(config, mirrored, 3)
  state = run.model.encoder.non_trainable_variables
  assert state
  initial = [np.zeros(v.shape) if 'mean' in v.path else np.ones(v.shape) for v in state]
  for variable, start in zip(state, initial):
    copies = [c.numpy() for c in mirrored.experimental_local_results(variable.value)]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
    assert not np.allclose(copies[0], start), variable.path  # they did move
  images = tf.random.stateless_uniform([8, 16, 16, 1], seed=[1, 2])
  logits = mirrored.experimental_local_results(mirrored.run(
      tf.function(lambda: run.model.target_logits(images, training=False))))
  np.testing.assert_array_equal(logits[0].numpy(), logits[1].numpy())


def _moving_statistics_after(config, strategy, source, target, step: bool) -> list:
  """The encoder's moving statistics after one joint model step (or, with
  step=False, after a lone training-mode target pass), from the same init."""
  keras.utils.set_random_seed(0)
  with strategy.scope():
    run = runs.build(config, strategy)
  if step:
    strategy.run(tf.function(run.trainer._model_step), args=(source, target))  # pylint: disable=protected-access
  else:
    run.model.encoder(target[0], training=True)
  state = run.model.encoder.non_trainable_variables
  assert state, 'small_cnn has BatchNorm moving statistics'
  return [strategy.experimental_local_results(v)[0].numpy() for v in state]


@pytest.mark.parametrize('strategy_name', ['default', 'mirrored'])
def test_target_bn_statistics_move_only_with_the_target_pass(tiny_data, tmp_path, mirrored,
                                                             strategy_name):
  strategy = mirrored if strategy_name == 'mirrored' else tf.distribute.get_strategy()
  rng = np.random.default_rng(0)
  # Source images far from the target's, so their statistics differ plainly.
  source = (tf.constant(rng.random((4, 16, 16, 1)) * 0.2 + 0.8, tf.float32),
            tf.constant([0, 1, 2, 0], tf.int32), tf.ones([4]))
  target = (tf.constant(rng.random((4, 16, 16, 1)) * 0.2, tf.float32),
            tf.constant([0, 1, 0, 1], tf.int32))
  assert source[0].shape[1] == tiny_config(tiny_data, tmp_path).data.image_size
  expected = _moving_statistics_after(tiny_config(tiny_data, tmp_path / 'lone'), strategy,
                                      source, target, step=False)
  for setting, matches in (('target', True), ('all', False)):
    config = tiny_config(tiny_data, tmp_path / setting,
                         model=ModelConfig(backbone='small_cnn', bn_statistics=setting))
    got = _moving_statistics_after(config, strategy, source, target, step=True)
    same = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(got, expected))
    assert same == matches, setting


def test_target_bn_statistics_leave_pretraining_alone(tiny_data, tmp_path):
  """Without a target pass, the source pass keeps moving the statistics."""
  config = tiny_config(tiny_data, tmp_path, mode='pretrain',
                       model=ModelConfig(backbone='small_cnn', bn_statistics='target'))
  keras.utils.set_random_seed(0)
  run = runs.build(config, tf.distribute.get_strategy())
  before = [v.numpy().copy() for v in run.model.encoder.non_trainable_variables]
  source = (tf.random.uniform([4, 16, 16, 1]), tf.constant([0, 1, 2, 0]), tf.ones([4]))
  tf.function(run.trainer._model_step)(source, None)  # pylint: disable=protected-access
  after = [v.numpy() for v in run.model.encoder.non_trainable_variables]
  assert not all(np.array_equal(a, b) for a, b in zip(before, after))


def _one_model_step(config, source, target):
  """Trainable variables and step outputs after one `_model_step` from a fixed init."""
  keras.utils.set_random_seed(0)
  run = runs.build(config, tf.distribute.get_strategy())
  outputs = tf.function(run.trainer._model_step)(source, target)  # pylint: disable=protected-access
  return [v.numpy() for v in run.model.trainable_variables], outputs


def _initial_cross_entropies(config, source_images, source_labels, target=None):
  """Per-example training-mode CE of the untouched model (seed 0), source and target."""
  keras.utils.set_random_seed(0)
  probe = runs.build(config, tf.distribute.get_strategy())
  source_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
      source_labels, probe.model.source_logits(source_images, training=True))
  target_ce = None if target is None else tf.nn.sparse_softmax_cross_entropy_with_logits(
      target[1], probe.model.target_logits(target[0], training=True))
  return source_ce, target_ce


def test_target_ratio_scaling_is_a_constant_factor_on_the_source_term(tiny_data, tmp_path):
  """The step with target_ratio equals the paper's step with the kept weights times
  min(1, mean L_T / mean L_S): the factor is measured on the step's own losses and
  no gradient flows through it."""
  rng = np.random.default_rng(1)
  source_images = tf.constant(rng.random((4, 16, 16, 1)), tf.float32)
  source_labels = tf.constant([0, 1, 2, 3], tf.int32)
  weights = tf.constant([1.0, 0.5, 0.25, 0.0])
  target = (tf.constant(rng.random((4, 16, 16, 1)), tf.float32),
            tf.constant([0, 1, 2, 3], tf.int32))
  base = tiny_config(tiny_data, tmp_path)
  scaled_config = dataclasses.replace(base, optimizer=dataclasses.replace(
      base.optimizer, source_loss_scaling='target_ratio'))

  # The factor from the untouched model's own training-mode losses.
  source_ce, target_ce = _initial_cross_entropies(base, source_images, source_labels, target)
  expected = min(1.0, float(tf.reduce_mean(target_ce)) / float(tf.reduce_mean(source_ce)))

  scaled, outputs = _one_model_step(scaled_config, (source_images, source_labels, weights),
                                    target)
  assert float(outputs['loss/source_scale']) == pytest.approx(expected, rel=1e-5)
  # min(1, .) must bite somewhere: a high-loss source makes the factor < 1.
  assert 0.0 < expected < 1.0
  by_hand, plain_outputs = _one_model_step(
      base, (source_images, source_labels, weights * expected), target)
  assert float(plain_outputs['loss/source_scale']) == 1.0
  assert float(outputs['loss/source']) == pytest.approx(float(plain_outputs['loss/source']),
                                                        rel=1e-5)
  for a, b in zip(scaled, by_hand):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_joint_loss_keeps_eq1_ratio_when_source_batch_is_larger(tiny_data, tmp_path):
  """Eq. 1 sums both terms: with B_S = 2 B_T the source sum must weigh twice
  what a per-batch mean would give it. Both sums are divided by B_T."""
  rng = np.random.default_rng(2)
  config = tiny_config(tiny_data, tmp_path, source_batch_ratio=2.0)
  assert (config.source_batch_size, config.target_batch_size) == (8, 4)
  source_images = tf.constant(rng.random((8, 16, 16, 1)), tf.float32)
  source_labels = tf.constant([0, 1, 2, 3, 4, 5, 0, 1], tf.int32)
  weights = tf.constant([1.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.5, 0.1])
  target = (tf.constant(rng.random((4, 16, 16, 1)), tf.float32),
            tf.constant([0, 1, 2, 3], tf.int32))

  source_ce, target_ce = _initial_cross_entropies(config, source_images, source_labels, target)

  _, outputs = _one_model_step(config, (source_images, source_labels, weights), target)
  assert float(outputs['loss/source']) == pytest.approx(
      float(tf.reduce_sum(source_ce * weights)) / 4, rel=1e-5)
  assert float(outputs['loss/target']) == pytest.approx(float(tf.reduce_sum(target_ce)) / 4,
                                                        rel=1e-5)
  # A source-only step (pretraining) averages over its own batch.
  pretrain = dataclasses.replace(config, mode=Mode('pretrain'))
  _, alone = _one_model_step(pretrain, (source_images, source_labels, weights), None)
  source_ce, _ = _initial_cross_entropies(pretrain, source_images, source_labels)
  assert float(alone['loss/source']) == pytest.approx(
      float(tf.reduce_sum(source_ce * weights)) / 8, rel=1e-5)


def _one_batch(config):
  """One source, target and reward batch, as the step receives them on one device."""
  subsets = input_pipeline.target_subsets(config)
  return (next(iter(input_pipeline.source_dataset(config))),
          next(iter(input_pipeline.target_train_dataset(config, subsets))),
          next(iter(input_pipeline.reward_dataset(config, subsets))))


def test_first_order_alpha_value_sums_the_kept_examples_with_their_weights(tiny_data, tmp_path):
  """alpha_s scales only the kept B_S; the value summed lambda * u over every candidate."""
  config = tiny_config(tiny_data, tmp_path, source_batch_multiplier=4)
  config = dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, lambda_credit='first_order', alpha_credit='first_order',
      credit_optimizer='sgd'))
  keras.utils.set_random_seed(0)
  run = runs.build(config, tf.distribute.get_strategy())
  source, target, reward = _one_batch(config)
  lambdas = tf.linspace(0.1, 1.0, config.data.source_num_classes)
  scores = run.trainer.candidate_scores(source, reward, target)
  weights = tf.gather(lambdas, source[1])
  kept = select_top_weighted(weights, config.source_batch_size)
  expected = float(tf.reduce_sum(tf.gather(weights, kept) * tf.gather(scores, kept)))
  every_candidate = float(tf.reduce_sum(weights * scores))
  outputs = run.trainer.replica_train_step(
      {'source': source, 'target': target, 'reward': reward, 'lambda': lambdas,
       'alpha': tf.constant(0.25)})
  assert float(outputs['credit_alpha']) == pytest.approx(expected, rel=1e-5, abs=1e-7)
  assert every_candidate != pytest.approx(expected, rel=1e-3)


def test_ncm_credit_loss_is_float32_under_bfloat16(tiny_data, tmp_path):
  """Its gradient scores every candidate: computed in bfloat16 it was off by ~0.1 a logit."""
  config = tiny_config(tiny_data, tmp_path, precision='mixed_bfloat16')
  config = dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, lambda_credit='first_order', credit_signal='ncm'))
  run = runs.build(config, tf.distribute.get_strategy())
  _, target, reward = _one_batch(config)
  logits = run.trainer._ncm_logits(reward[0], target)  # pylint: disable=protected-access
  assert logits.dtype == tf.float32


def test_the_logged_learning_rate_is_the_one_the_step_trained_with(tiny_data, tmp_path):
  """It was read after the update, so it reported the next step's rate."""
  config = tiny_config(tiny_data, tmp_path,
                       optimizer=OptimizerConfig(learning_rate=0.05, warmup_steps=2))
  _, metrics, _ = _run_steps(config, tf.distribute.get_strategy(), 1)
  schedule = trainer_lib.learning_rate_schedule(config)
  assert metrics['learning_rate'] == pytest.approx(float(schedule(0)))
  assert float(schedule(0)) != pytest.approx(float(schedule(1)))
