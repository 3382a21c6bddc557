"""Evaluation metrics: the AUC of metrics.json and the AUC reward agree with pairwise counting."""

import numpy as np
import pytest
import tensorflow as tf

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
