"""Ranks source classes by the learned lambda (Table 4 of the paper).

The paper samples 10,000 actions from the trained policy and ranks source
labels by their weights; `source_class_weights.csv` holds, per source class,
the mean and std of lambda over those samples, highest mean first.
"""

import csv
import dataclasses
import io
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from l2tl_tf import files
from l2tl_tf.policy import Policy, sampled_class_weights

WEIGHTS_FILE = 'source_class_weights.csv'
CSV_COLUMNS = ('source_class_id', 'name', 'expected_lambda', 'std')


@dataclasses.dataclass(frozen=True)
class RankedClass:
  class_id: int
  name: str
  expected_lambda: float
  std: float


def rank_source_classes(policy: Policy, class_names: list[str], num_samples: int = 10_000,
                        seed: int = 0) -> list[RankedClass]:
  """Source classes sorted by mean sampled lambda (ties by class id)."""
  if num_samples < 1:
    raise ValueError(f'num_samples={num_samples}: the ranking needs at least one sample.')
  means, stds = sampled_class_weights(policy, num_samples, seed)
  return ranked_by_weight(means, class_names, stds)


def ranked_by_weight(weights: np.ndarray, class_names: list[str],
                     stds: Optional[np.ndarray] = None) -> list[RankedClass]:
  """Classes sorted by weight, highest first (ties by class id); std 0 when not given."""
  stds = np.zeros(len(weights)) if stds is None else stds
  order = np.lexsort((np.arange(len(weights)), -weights))
  return [RankedClass(int(i), class_names[i], float(weights[i]), float(stds[i])) for i in order]


def write_source_class_weights(ranked: list[RankedClass], model_dir: str,
                               filename: str = WEIGHTS_FILE) -> str:
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, filename)
  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(CSV_COLUMNS)
  for row in ranked:
    writer.writerow([row.class_id, row.name, f'{row.expected_lambda:.6f}', f'{row.std:.6f}'])
  files.write_text_atomically(path, text.getvalue())
  return path


def read_source_class_weights(model_dir: str, filename: str = WEIGHTS_FILE) -> list[RankedClass]:
  return [RankedClass(int(r['source_class_id']), r['name'], float(r['expected_lambda']),
                      float(r['std'])) for r in _csv_rows(os.path.join(model_dir, filename))]


def _csv_rows(path: str) -> list[dict]:
  """Rows of a CSV on any filesystem tf.io.gfile reaches (local, gs://, ...)."""
  with tf.io.gfile.GFile(path, 'r') as f:
    return list(csv.DictReader(io.StringIO(f.read(), newline='')))


def read_class_weight_vector(path: str, num_classes: int) -> np.ndarray:
  """lambda per source class id from a source_class_weights.csv-style file.

  Raises:
    ValueError: when a class id is missing, repeated or out of range, or a
      weight is outside [0, 1] or not a number.
  """
  rows = _csv_rows(path)
  ids = np.array([int(r['source_class_id']) for r in rows])
  weights = np.array([float(r['expected_lambda']) for r in rows], dtype=np.float32)
  if sorted(ids.tolist()) != list(range(num_classes)):
    raise ValueError(f'{path} must list every source class id 0..{num_classes - 1} once '
                     f'(--source_num_classes={num_classes}); it lists {len(ids)} rows.')
  if not np.all(np.isfinite(weights)) or weights.min() < 0.0 or weights.max() > 1.0:
    raise ValueError(f'{path} has weights outside [0, 1] ({weights.min()} .. {weights.max()}; '
                     f'{int(np.sum(~np.isfinite(weights)))} not a number).')
  vector = np.zeros(num_classes, np.float32)
  vector[ids] = weights
  return vector
