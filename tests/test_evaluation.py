"""Evaluation: AUCs against pairwise counting, ten-crop and checkpoint-ensemble protocols."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from l2tl_tf import evaluation, input_pipeline, loop, runs
from l2tl_tf.config import DataConfig
from l2tl_tf.evaluation import one_vs_rest_auc
from l2tl_tf.trainer import mean_auc


def _pairwise_auc(labels, scores):
  """Mean over classes of P(positive scores above negative), ties counting one half."""
  aucs = []
  for cls in range(scores.shape[1]):
    pos, neg = scores[labels == cls, cls], scores[labels != cls, cls]
    if len(pos) and len(neg):
      aucs.append(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
  return np.mean(aucs)


def _tied_scores(seed):
  """Scores on a coarse grid, so many tie within a class, including saturated 1.0s."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, 30)
  scores = rng.integers(0, 4, (30, 3)).astype(np.float32) / 3.0
  return labels, scores


@pytest.mark.parametrize('auc', [
    lambda labels, scores: float(mean_auc(tf.constant(labels, tf.int32), scores, 3)),
    lambda labels, scores: one_vs_rest_auc(labels, scores),
], ids=['reward', 'evaluation'])
def test_auc_with_ties_matches_pairwise_counting_in_any_order(auc):
  labels, scores = _tied_scores(0)
  expected = _pairwise_auc(labels, scores)
  assert auc(labels, scores) == pytest.approx(expected, rel=1e-6)
  order = np.random.default_rng(1).permutation(len(labels))
  assert auc(labels[order], scores[order]) == pytest.approx(expected, rel=1e-6)


def test_auc_of_all_tied_scores_is_one_half():
  labels = np.array([0, 1, 0, 1])
  scores = np.ones((4, 2), np.float32)
  assert one_vs_rest_auc(labels, scores) == pytest.approx(0.5)
  assert float(mean_auc(tf.constant(labels, tf.int32), scores, 2)) == pytest.approx(0.5)


def test_ten_crops_are_the_corners_and_centre_of_the_enlarged_image_and_their_mirrors():
  image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
  data = DataConfig(image_size=14, num_channels=3)
  crops = input_pipeline.preprocess_ten_crop(tf.constant(image), data).numpy()
  full = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [16, 16]).numpy()
  assert round(14 / 0.875) == 16 and crops.shape == (10, 14, 14, 3)
  expected = [full[:14, :14], full[:14, 2:], full[2:, :14], full[2:, 2:], full[1:15, 1:15]]
  for got, want in zip(crops, expected + [w[:, ::-1] for w in expected]):
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-6)


@pytest.fixture(scope='module')
def three_checkpoints(tiny_data, pretrained, tmp_path_factory) -> str:
  """A fine-tuning run that kept checkpoints at steps 2, 4 and 6."""
  config = tiny_config(tiny_data, tmp_path_factory.mktemp('run'), mode='finetune',
                       warm_start_from=pretrained, steps_per_loop=2, checkpoint_every=2,
                       keep_checkpoints=3)
  loop.run_training(config, tf.distribute.get_strategy(), log=lambda _: None)
  return config.model_dir


def _probabilities(model_dir, prefix, crops):
  run = runs.restore_for_inference(model_dir)
  run.checkpoint.restore(prefix).expect_partial()
  dataset = input_pipeline.eval_dataset(run.config, 'test', crops)
  return evaluation.predict_dataset(evaluation.make_predictor(run), dataset)


def test_ten_crop_prediction_is_the_mean_over_each_images_crops(three_checkpoints):
  run = runs.restore_for_inference(three_checkpoints)
  dataset = input_pipeline.eval_dataset(run.config, 'test', crops=10)
  images, _ = next(iter(dataset))
  got = evaluation.make_predictor(run)(images).numpy()
  single = evaluation.make_predictor(run)
  want = np.stack([single(image).numpy().mean(0) for image in images])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_an_ensemble_averages_the_newest_kept_checkpoints(three_checkpoints):
  model_dir = three_checkpoints
  metrics = evaluation.evaluate(model_dir, crops=10, num_checkpoints=2)
  assert metrics['checkpoints'] == ['ckpt-4', 'ckpt-6'] and metrics['crops'] == 10
  assert metrics['step'] == 6
  parts = [_probabilities(model_dir, os.path.join(model_dir, name), 10)
           for name in ('ckpt-4', 'ckpt-6')]
  mean, labels = (parts[0][0] + parts[1][0]) / 2, parts[0][1]
  assert metrics['top1'] == pytest.approx(evaluation.top1(mean, labels))
  assert metrics['mean_auc'] == pytest.approx(one_vs_rest_auc(labels, mean))
  assert json.load(open(os.path.join(model_dir, 'metrics.json'))) == metrics
  # The protocol changes the numbers: the latest checkpoint's central crop differs.
  latest = evaluation.evaluate(model_dir)
  assert 'checkpoints' not in latest and latest['mean_auc'] != metrics['mean_auc']


def test_an_ensemble_larger_than_the_kept_checkpoints_is_refused(three_checkpoints):
  with pytest.raises(ValueError, match=r'--ensemble_checkpoints=4 but .* keeps 3 checkpoint'):
    evaluation.evaluate(three_checkpoints, num_checkpoints=4)


def test_a_relative_model_dir_evaluates_as_an_absolute_one(three_checkpoints, monkeypatch):
  """Checkpoint paths come back joined to model_dir already: joined once more they broke
  `evaluate --model_dir=runs/x` (the README's command and the demo's default)."""
  absolute = evaluation.evaluate(three_checkpoints, num_checkpoints=2)
  monkeypatch.chdir(os.path.dirname(three_checkpoints))
  relative = evaluation.evaluate(os.path.basename(three_checkpoints), num_checkpoints=2)
  assert relative == absolute


def test_ten_crop_batches_hold_a_tenth_of_the_images(three_checkpoints):
  run = runs.restore_for_inference(three_checkpoints)
  assert run.config.eval_batch_size == 16
  images, _ = next(iter(input_pipeline.eval_dataset(run.config, 'test', crops=10)))
  assert images.shape[:2] == (1, 10)
