"""DATL weights: P_T(y) / P_S(y) from the source model, scaled to [0, 1]."""

import numpy as np

from conftest import tiny_config
from l2tl_tf import datl, ranking


def test_datl_weights_are_the_prior_ratio_scaled_to_one():
  weights = datl.datl_weights(np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.25, 0.5, 0.25, 0.0]))
  np.testing.assert_allclose(weights, [1.0, 0.3, 0.4, 0.0])


def test_write_datl_weights_from_a_pretrained_run(tiny_data, pretrained, tmp_path):
  config = tiny_config(tiny_data, tmp_path, mode='pretrain')
  prior = datl.target_prior_under_source_model(pretrained, config)
  assert prior.shape == (8,) and abs(prior.sum() - 1.0) < 1e-4
  np.testing.assert_allclose(datl.source_prior(config), np.full(8, 1 / 8))
  path = datl.write_datl_weights(pretrained, config, str(tmp_path / 'datl'))
  vector = ranking.read_class_weight_vector(path, 8)
  assert vector.max() == 1.0
  np.testing.assert_allclose(vector, prior / prior.max(), rtol=1e-5)
