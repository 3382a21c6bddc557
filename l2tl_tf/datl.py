"""Domain adaptive transfer learning (DATL, Ngiam et al. 2018) class weights.

DATL weights source class y by P_target(y) / P_source(y): P_source from the
source labels, P_target as the mean prediction of the *source* model over the
target training images. The paper compares L2TL with DATL, which pretrains on
the source reweighted this way and then fine-tunes. Here the weights are
written as a source_class_weights.csv (scaled to a maximum of 1, the lambda
range), so `--mode=pretrain --fixed_source_weights=...` continues pretraining
with them and `--mode=finetune` finishes the recipe.
"""

import numpy as np
import tensorflow as tf

from l2tl_tf import input_pipeline, ranking, runs
from l2tl_tf.config import Config


def target_prior_under_source_model(source_model_dir: str, config: Config) -> np.ndarray:
  """P_target(y): mean source-head softmax over the target training subset."""
  run = runs.restore_for_inference(source_model_dir)
  if run.model.source_head is None:
    raise ValueError(f'{source_model_dir} has no source head: give a pretrain run.')
  predict = tf.function(
      lambda images: tf.nn.softmax(run.model.source_logits(images, training=False)))
  total, count = 0.0, 0
  for images, _ in input_pipeline.eval_dataset(config, 'train'):
    probabilities = predict(images).numpy()
    total, count = total + probabilities.sum(axis=0), count + len(probabilities)
  return total / count


def source_prior(config: Config) -> np.ndarray:
  """P_source(y): class frequencies of the source training set."""
  data = config.data
  labels = input_pipeline.scan_labels(data.source_train, data, data.source_label_offset)
  return np.bincount(labels, minlength=data.source_num_classes) / len(labels)


def datl_weights(target_prior: np.ndarray, source_prior_: np.ndarray) -> np.ndarray:
  """P_T / P_S scaled to [0, 1]; classes absent from the source get 0."""
  ratio = np.divide(target_prior, source_prior_, out=np.zeros_like(target_prior),
                    where=source_prior_ > 0)
  return ratio / ratio.max()


def write_datl_weights(source_model_dir: str, config: Config, model_dir: str) -> str:
  """Computes DATL weights for `config`'s target and writes them as a CSV."""
  weights = datl_weights(target_prior_under_source_model(source_model_dir, config),
                         source_prior(config))
  names = input_pipeline.source_class_names(config.data)
  return ranking.write_source_class_weights(ranking.ranked_by_weight(weights, names), model_dir)
