"""Evaluation of a trained run's target head on a target split.

Writes `model_dir/metrics.json` (contract: `split`, `num_examples`, `top1`,
plus `mean_auc`, one-vs-rest over the split, and the checkpoint `step`). For a
multi-label target (--target_multi_label) `top1` is null, `per_class_auc` lists
each class's AUC and `mean_auc` is their mean, as CheXpert is scored.
"""

import json
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from l2tl_tf import files, input_pipeline, preflight, runs
from l2tl_tf.runs import Run

METRICS_FILE = 'metrics.json'


def make_predictor(run: Run) -> Callable[[tf.Tensor], tf.Tensor]:
  """A traced images -> target-head probabilities function (inference mode).

  Softmax over classes, or each class's sigmoid for a multi-label target.
  Images [B, crops, H, W, C] (ten-crop evaluation) get the mean over their
  crops' probabilities.
  """
  activation = tf.math.sigmoid if run.config.data.target_multi_label else tf.nn.softmax

  def predict(images):
    if images.shape.rank == 4:
      return activation(run.model.target_logits(images, training=False))
    crops = tf.shape(images)[1]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
    probabilities = activation(run.model.target_logits(flat, training=False))
    return tf.reduce_mean(tf.reshape(probabilities, [-1, crops, probabilities.shape[-1]]), 1)
  return tf.function(predict)


def predict_dataset(predictor: Callable, dataset: tf.data.Dataset) -> tuple[np.ndarray,
                                                                            np.ndarray]:
  """Probabilities and labels over a batched (images, labels) dataset, in order."""
  probabilities, labels = [], []
  for images, batch_labels in dataset:
    probabilities.append(predictor(images).numpy())
    labels.append(batch_labels.numpy())
  if not labels:
    raise ValueError('The evaluation dataset holds no example.')
  return np.concatenate(probabilities), np.concatenate(labels)


def top1(probabilities: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def class_aucs(positives: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
  """ROC AUC of each class's scores against its [N, C] boolean positives.

  NaN for a class without both positives and negatives. Tied scores take
  their mean rank (a tie counts one half), so the result does not depend on
  the order of the examples.
  """
  aucs = np.full(probabilities.shape[1], np.nan)
  for cls in range(probabilities.shape[1]):
    positive = positives[:, cls]
    if positive.all() or not positive.any():
      continue
    scores = probabilities[:, cls]
    ordered = np.sort(scores)
    ranks = (np.searchsorted(ordered, scores, 'left') + np.searchsorted(ordered, scores, 'right')
             + 1) / 2
    num_pos, num_neg = positive.sum(), (~positive).sum()
    aucs[cls] = (ranks[positive].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
  return aucs


def positives_of(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[N, C] boolean positives of class ids [N] or multi-hot labels [N, C]."""
  if labels.ndim == 2:
    return labels > 0.5
  return labels[:, None] == np.arange(num_classes)[None, :]


def one_vs_rest_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
  """Mean ROC AUC over classes that have both positives and negatives.

  `labels`: class ids [N], or multi-hot [N, C] for a multi-label target.
  """
  aucs = class_aucs(positives_of(labels, probabilities.shape[1]), probabilities)
  return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float('nan')


def validation_metric(config) -> tuple[str, Callable[[np.ndarray, np.ndarray], float]]:
  """The validation curve's name and its score of (probabilities, labels).

  Top-1, or mean AUC for a multi-label target, where top-1 has no meaning.
  """
  if config.data.target_multi_label:
    return 'eval/val_mean_auc', lambda probabilities, labels: one_vs_rest_auc(labels,
                                                                              probabilities)
  return 'eval/val_top1', top1


def _json_number(value: float):
  """null, not NaN (which is not JSON), for an undefined metric."""
  return float(value) if np.isfinite(value) else None


def ensemble_checkpoints(model_dir: str, count: int) -> list[str]:
  """The newest `count` checkpoints the run kept, oldest first.

  Raises:
    ValueError: when it kept fewer.
  """
  if count < 1:
    raise ValueError(f'--ensemble_checkpoints={count} must be >= 1.')
  state = tf.train.get_checkpoint_state(model_dir)
  # The checkpoints live in model_dir: their names, joined to it, hold for a
  # relative or gs:// model_dir, and for paths recorded before a move.
  kept = ([os.path.join(model_dir, os.path.basename(path))
           for path in state.all_model_checkpoint_paths] if state else [])
  if len(kept) < count:
    raise ValueError(
        f'--ensemble_checkpoints={count} but {model_dir} keeps {len(kept)} checkpoint(s): '
        f'train with --keep_checkpoints >= {count} and a --checkpoint_every that saves '
        f'{count} times, or ensemble fewer.')
  return kept[-count:]


def ensemble_predictions(run: Run, dataset: tf.data.Dataset,
                         checkpoints: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Mean probabilities over `checkpoints` (restored in turn into `run`), and the labels.

  The run is left at the last checkpoint given.
  """
  predictor, total = make_predictor(run), None
  for path in checkpoints:
    run.checkpoint.restore(path).expect_partial()
    probabilities, labels = predict_dataset(predictor, dataset)
    total = probabilities if total is None else total + probabilities
  return total / len(checkpoints), labels


def evaluate(model_dir: str, split: str = 'test', target_test: str = '', crops: int = 1,
             num_checkpoints: int = 1) -> dict:
  """Evaluates `model_dir` and writes metrics.json.

  Args:
    model_dir: a run directory written by training.
    split: 'test', 'val' or 'train' (see `input_pipeline.eval_dataset`).
    target_test: overrides the run's --target_test spec when given.
    crops: 1 (one central crop) or 10 (ten crops, probabilities averaged).
    num_checkpoints: averages the probabilities of the newest this many kept
      checkpoints (1: the latest alone). CheXpert's protocol (the paper's
      Table 7) is ten crops and 30 checkpoints.
  """
  run = runs.restore_for_inference(model_dir, target_test=target_test)
  if run.model.target_head is None:
    raise ValueError(f'{model_dir} is a {run.config.mode.value} run: it has no target head.')
  checkpoints = ensemble_checkpoints(model_dir, num_checkpoints)
  multi_label = run.config.data.target_multi_label
  try:
    probabilities, labels = ensemble_predictions(
        run, input_pipeline.eval_dataset(run.config, split, crops), checkpoints)
  except tf.errors.InvalidArgumentError as error:
    if not multi_label:
      raise
    # A multi-label stream checks each record's ids (and label feature) as it reads.
    raise ValueError(f'The {split} split cannot be scored: '
                     f'{preflight.tf_reason(error)}') from None
  if not multi_label:  # multi-hot labels were range-checked as they were read
    check_labels(labels, probabilities.shape[1], split, run.config)
  aucs = class_aucs(positives_of(labels, probabilities.shape[1]), probabilities)
  metrics = {
      'split': split,
      'num_examples': int(len(labels)),
      'top1': None if multi_label else top1(probabilities, labels),
      # null when no class has both positives and negatives.
      'mean_auc': _json_number(np.nanmean(aucs)) if np.isfinite(aucs).any() else None,
  }
  if multi_label:
    metrics['per_class_auc'] = [_json_number(auc) for auc in aucs]
  metrics['step'] = int(run.trainer.step.numpy())
  if crops > 1 or num_checkpoints > 1:
    metrics['crops'] = crops
    metrics['checkpoints'] = [os.path.basename(path) for path in checkpoints]
  files.write_text_atomically(os.path.join(model_dir, METRICS_FILE),
                              json.dumps(metrics, indent=2, allow_nan=False))
  return metrics


def check_labels(labels: np.ndarray, num_classes: int, split: str, config) -> None:
  """Refuses labels outside [0, num_classes) instead of scoring them as errors.

  Training checks every target-train and validation label before its first
  step, but the test split is checked there only by its first record, and
  `evaluate --target_test` can point anywhere: a 1-based test file would
  otherwise give a silently wrong top-1.
  """
  outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if not outside.size:
    return
  offset = config.data.target_label_offset
  hint = (f' They look 1-based (1..{num_classes}): the labels are read with '
          f'--target_label_offset={offset}; rerun with --target_label_offset={offset + 1}.'
          if preflight.looks_one_based(labels, num_classes) else '')
  raise ValueError(
      f'The {split} split has {outside.size} of {labels.size} labels outside [0, {num_classes}) '
      f'for --target_num_classes={num_classes} (example {outside[0]}: label {labels[outside[0]]} '
      f'after --target_label_offset={offset}).{hint}')
