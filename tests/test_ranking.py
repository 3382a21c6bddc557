"""ranking.py: the ranked CSV, reading weights back, and what it refuses."""

import numpy as np
import pytest
import tensorflow as tf

from l2tl_tf import ranking


def write_weights(path, weights):
  rows = ['source_class_id,name,expected_lambda,std']
  rows += [f'{i},c{i},{w},0' for i, w in enumerate(weights)]
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write('\n'.join(rows) + '\n')


def test_ties_rank_by_class_id_and_the_csv_reads_back(tmp_path):
  ranked = ranking.ranked_by_weight(np.array([0.5, 0.9, 0.5]), ['a', 'b', 'c'])
  assert [row.class_id for row in ranked] == [1, 0, 2]
  ranking.write_source_class_weights(ranked, str(tmp_path))
  assert ranking.read_source_class_weights(str(tmp_path)) == ranked
  np.testing.assert_allclose(ranking.read_class_weight_vector(
      str(tmp_path / ranking.WEIGHTS_FILE), 3), [0.5, 0.9, 0.5])


@pytest.mark.parametrize('bad', ['nan', '1.5', '-0.1', 'inf'])
def test_weights_outside_zero_one_or_not_a_number_are_refused(tmp_path, bad):
  """A NaN passed the range check and made training diverge with the wrong advice."""
  path = str(tmp_path / 'weights.csv')
  write_weights(path, ['1', bad, '0.5'])
  with pytest.raises(ValueError, match='outside'):
    ranking.read_class_weight_vector(path, 3)


def test_weights_are_written_and_read_on_any_gfile_filesystem(tmp_path, monkeypatch):
  """os.makedirs and open() made a stray local 'ram:' folder and could not read gs:// back."""
  monkeypatch.chdir(tmp_path)
  model_dir = 'ram://ranking_test/run'
  ranked = ranking.ranked_by_weight(np.array([0.2, 0.7]), ['a', 'b'])
  path = ranking.write_source_class_weights(ranked, model_dir)
  assert path.startswith('ram://')
  assert ranking.read_source_class_weights(model_dir) == ranked
  np.testing.assert_allclose(ranking.read_class_weight_vector(path, 2), [0.2, 0.7])
  assert not list(tmp_path.iterdir())
