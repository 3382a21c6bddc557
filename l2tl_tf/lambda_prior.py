"""Where the lambda policy starts: source classes that look like the target.

The paper starts every source class's categorical uniform and leaves the
policy gradient to find the useful classes. At our benchmark's scale (about
1,368 source classes, a few hundred steps) no one-step signal we measured
found planted target-like classes that pretraining had already fit
(BUILD_NOTES.md, "A policy that learns"). The pretrained encoder already
knows which source classes look like the target, though: the cosine between a
source class's mean feature and the nearest target class's mean feature.

`--lambda_prior=feature_similarity` turns that score into starting logits
(`Policy.set_lambda_prior`); the policy gradient then moves them as before.
It runs once, before the first step of a fresh run (a resumed run restores
its logits), and writes the weights to `lambda_prior.csv` so the ranking of
the prior alone can be set against the learned one.
"""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from l2tl_tf import input_pipeline, ranking
from l2tl_tf.config import Config

PRIOR_FILE = 'lambda_prior.csv'


def class_mean_features(features: Callable[[tf.Tensor], tf.Tensor], dataset: tf.data.Dataset,
                        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Mean feature and example count per class over a batched (images, labels) dataset.

  Labels are class ids, or multi-hot rows (a multi-label target): an image
  then counts towards the mean of each of its positive classes.
  """
  sums, counts = None, np.zeros(num_classes, np.int64)
  for images, labels in dataset:
    batch = features(images).numpy().astype(np.float64)
    labels = labels.numpy()
    if sums is None:
      sums = np.zeros([num_classes, batch.shape[1]])
    if labels.ndim == 2:
      positives = (labels > 0.5).astype(np.float64)
      sums += positives.T @ batch
      counts += positives.sum(axis=0).astype(np.int64)
      continue
    np.add.at(sums, labels, batch)
    counts += np.bincount(labels, minlength=num_classes)
  if sums is None:
    raise ValueError('The lambda prior saw no example.')
  return sums / np.maximum(counts, 1)[:, None], counts


def similarity_scores(source_means: np.ndarray, source_counts: np.ndarray,
                      target_means: np.ndarray) -> np.ndarray:
  """Per source class: cosine of its mean feature with the nearest target class mean.

  NaN for source classes with no example in the sample.
  """
  def unit(vectors):
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
  scores = (unit(source_means) @ unit(target_means).T).max(axis=1)
  return np.where(source_counts > 0, scores, np.nan)


def prior_weights(scores: np.ndarray) -> np.ndarray:
  """Scores scaled to [0, 1] (min to max); unsampled classes get the median weight."""
  seen = np.isfinite(scores)
  if not seen.any():
    raise ValueError('The lambda prior has no score for any source class.')
  low, high = scores[seen].min(), scores[seen].max()
  weights = np.full(scores.shape, 0.5)
  if high > low:
    weights[seen] = (scores[seen] - low) / (high - low)
  weights[~seen] = np.median(weights[seen])
  return weights.astype(np.float32)


def _source_sample(config: Config) -> tf.data.Dataset:
  """Up to --lambda_prior_examples source examples, seeded shuffle, eval preprocessing."""
  data = config.data
  seed = int(np.random.default_rng([config.seed, 4]).integers(2**31 - 1))
  dataset = input_pipeline.raw_dataset(data.source_train, data, data.source_label_offset,
                                       shuffle_files_seed=seed,
                                       num_classes=data.source_num_classes)
  dataset = dataset.shuffle(data.shuffle_buffer, seed=seed)
  dataset = dataset.take(config.policy.lambda_prior_examples)
  return input_pipeline.eval_preprocessed(dataset, data).batch(config.eval_batch_size)


def feature_similarity_weights(encoder, config: Config) -> np.ndarray:
  """The prior's weight per source class, from `encoder` (inference mode)."""
  features = tf.function(lambda images: tf.cast(encoder(images, training=False), tf.float32))
  source_means, source_counts = class_mean_features(
      features, _source_sample(config), config.data.source_num_classes)
  target_means, target_counts = class_mean_features(
      features, input_pipeline.eval_dataset(config, 'train'), config.data.target_num_classes)
  if (target_counts == 0).any():
    raise ValueError(f'Target classes {np.flatnonzero(target_counts == 0).tolist()} have no '
                     'training example for the lambda prior.')
  return prior_weights(similarity_scores(source_means, source_counts, target_means))


def write_prior(weights: np.ndarray, class_names: list[str], model_dir: str) -> str:
  """Writes the prior in source_class_weights.csv's columns, highest first."""
  return ranking.write_source_class_weights(ranking.ranked_by_weight(weights, class_names),
                                            model_dir, PRIOR_FILE)


def lambda_prior(encoder, config: Config) -> Optional[np.ndarray]:
  """The configured prior's weights, or None for the paper's uniform start."""
  if config.policy.lambda_prior == 'none':
    return None
  return feature_similarity_weights(encoder, config)
