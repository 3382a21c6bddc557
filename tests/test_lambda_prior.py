"""The feature-similarity prior over lambda: scores, weights, and where a run starts."""

import csv
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from l2tl_tf import config as config_lib
from l2tl_tf import lambda_prior, loop, ranking
from l2tl_tf.config import PolicyConfig
from l2tl_tf.policy import Policy


def batches(features, labels, batch_size=3):
  return tf.data.Dataset.from_tensor_slices(
      (np.asarray(features, np.float32), np.asarray(labels, np.int32))).batch(batch_size)


def test_class_means_and_counts_over_batches():
  features = [[1, 0], [3, 0], [0, 2], [0, 4], [5, 5]]
  means, counts = lambda_prior.class_mean_features(tf.identity, batches(features,
                                                                        [0, 0, 1, 1, 1]), 3)
  np.testing.assert_allclose(means[:2], [[2, 0], [5 / 3, 11 / 3]])
  np.testing.assert_array_equal(counts, [2, 3, 0])
  with pytest.raises(ValueError, match='saw no example'):
    lambda_prior.class_mean_features(tf.identity, batches(features, [0] * 5).take(0), 3)


def test_source_classes_like_a_target_class_score_highest():
  """Cosine with the nearest target class mean; unsampled classes get the median."""
  target_means = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  source_means = np.array([[0.0, 0.0, 1.0],    # like neither target class
                           [0.1, 1.0, 0.0],    # close to target class 1
                           [2.0, 0.0, 0.1],    # close to target class 0 (scale-free)
                           [0.0, 0.0, 0.0]])   # not sampled
  scores = lambda_prior.similarity_scores(source_means, np.array([5, 5, 5, 0]), target_means)
  assert np.isnan(scores[3])
  assert scores[2] > scores[1] > scores[0]
  weights = lambda_prior.prior_weights(scores)
  assert weights[2] == 1.0 and weights[0] == 0.0
  assert weights[3] == np.median(weights[:3])
  np.testing.assert_array_equal(lambda_prior.prior_weights(np.array([0.3, 0.3])), [0.5, 0.5])


@pytest.mark.parametrize('level_values', ['paper', 'official'])
def test_policy_starts_each_class_near_its_prior_weight(level_values):
  policy = Policy(4, PolicyConfig(level_values=level_values), seed=0)
  weights = np.array([0.0, 0.3, 0.7, 1.0], np.float32)
  policy.set_lambda_prior(weights, strength=20.0)
  expected = policy.expected_lambda().numpy()
  assert np.all(np.diff(expected) > 0)
  np.testing.assert_allclose(expected, weights, atol=0.2)
  policy.set_lambda_prior(weights, strength=0.0)
  np.testing.assert_array_equal(policy.lambda_logits.numpy(), 0.0)


def test_prior_settings_are_checked(tiny_data, tmp_path):
  base = tiny_config(tiny_data, tmp_path, warm_start_from='/pretrain')

  def check(warm_start_from='/pretrain', **policy):
    config = dataclasses.replace(base, warm_start_from=warm_start_from,
                                 policy=PolicyConfig(**policy))
    config_lib.validate(config)
  with pytest.raises(ValueError, match="use 'none' or 'feature_similarity'"):
    check(lambda_prior='datl')
  with pytest.raises(ValueError, match='needs --warm_start_from'):
    check(warm_start_from='', lambda_prior='feature_similarity')
  with pytest.raises(ValueError, match='must be >= 0'):
    check(lambda_prior='feature_similarity', lambda_prior_strength=-1.0)
  with pytest.raises(ValueError, match='must be >= 1'):
    check(lambda_prior='feature_similarity', lambda_prior_examples=0)
  with pytest.raises(ValueError, match='--mode=l2tl, not uniform'):
    config_lib.validate(dataclasses.replace(
        base, mode=config_lib.Mode.UNIFORM,
        policy=PolicyConfig(lambda_prior='feature_similarity')))


def read_rows(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def assert_policy_follows(prior_rows, learned_rows):
  """Each class's expected lambda sits at the lambda level nearest its prior weight."""
  prior = {row['source_class_id']: float(row['expected_lambda']) for row in prior_rows}
  learned = {row['source_class_id']: float(row['expected_lambda']) for row in learned_rows}
  assert prior.keys() == learned.keys()
  for class_id, weight in prior.items():
    assert abs(learned[class_id] - weight) <= 0.06, (class_id, weight, learned[class_id])


def prior_config(tiny_data, pretrained, model_dir):
  """A strong prior and a policy that barely moves: it ends where the prior put it."""
  config = tiny_config(tiny_data, model_dir, warm_start_from=pretrained)
  return dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, learning_rate=1e-9, lambda_prior='feature_similarity',
      lambda_prior_strength=1000.0))


def test_a_fresh_run_starts_from_the_prior_and_a_resumed_one_keeps_its_logits(
    tiny_data, pretrained, tmp_path):
  config = prior_config(tiny_data, pretrained, tmp_path)
  lines = []
  loop.run_training(config, log=lines.append)
  assert any(line.startswith('Lambda prior (feature_similarity)') for line in lines)
  prior = read_rows(tmp_path / lambda_prior.PRIOR_FILE)
  weights = [float(row['expected_lambda']) for row in prior]
  assert sorted(row['name'] for row in prior) == [f'class_{i}' for i in range(8)]
  assert weights == sorted(weights, reverse=True) and weights[0] == 1.0 and weights[-1] == 0.0
  assert_policy_follows(prior, read_rows(tmp_path / ranking.WEIGHTS_FILE))

  longer = dataclasses.replace(config, train_steps=9)
  lines.clear()
  loop.run_training(longer, log=lines.append)
  assert any(line.startswith('Resuming') for line in lines)
  assert not any(line.startswith('Lambda prior') for line in lines)


def test_the_prior_is_the_same_under_mirrored_replicas(tiny_data, pretrained, tmp_path,
                                                       mirrored):
  alone = prior_config(tiny_data, pretrained, tmp_path / 'alone')
  loop.run_training(alone, log=lambda _: None)
  replicated = dataclasses.replace(alone, model_dir=str(tmp_path / 'mirrored'))
  loop.run_training(replicated, strategy=mirrored, log=lambda _: None)
  rows = read_rows(tmp_path / 'alone' / lambda_prior.PRIOR_FILE)
  mirrored_rows = read_rows(tmp_path / 'mirrored' / lambda_prior.PRIOR_FILE)
  assert [r['source_class_id'] for r in rows] == [r['source_class_id'] for r in mirrored_rows]
  np.testing.assert_allclose([float(r['expected_lambda']) for r in rows],
                             [float(r['expected_lambda']) for r in mirrored_rows], atol=1e-5)
  assert_policy_follows(rows, read_rows(tmp_path / 'mirrored' / ranking.WEIGHTS_FILE))
