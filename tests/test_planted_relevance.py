"""Planted-relevance test: L2TL's REINFORCE policy must find the useful source classes.

The source dataset holds two kinds of classes, with shuffled class ids:

* planted: source class P_i is a fresh sample of target class i (same
  pattern, same noise model, other images than the target's), labelled P_i;
* noise: each noise class holds images of *all* target patterns mixed at
  random under one label. Training on it tells the encoder that the target
  patterns belong together, which is the opposite of what the target needs.

The target has only 5 training images per class, so its head leans on what the
shared encoder learns from the source. After a short `mode=l2tl` run the
policy's mean sampled lambda (`TrainResult.ranked_classes`) must rank the
planted classes above the noise classes: at least 3 in 4 planted-noise pairs in
that order and a clear gap between the means.

Why a per-step REINFORCE signal can separate them. Every step samples a lambda
in {0, 1} per source class; the top-B_S of the M_S * B_S candidates by lambda
are kept, so the kept batch is made of the classes switched on that step. A
step whose kept batch is richer in planted classes moves the encoder towards
features that tell the target patterns apart; a step richer in noise classes
pulls those features together. The reward (target-validation AUC, measured
right after the step) therefore rises with lambda of a planted class and falls
with lambda of a noise class, and REINFORCE with a fast moving baseline
credits each class with that difference. Two settings make the one-step effect
visible above the noise of the reward: plain SGD without momentum (with
momentum a step's gradient would act mostly on later steps, whose actions are
unrelated) at a high learning rate, and M_S = 4 so that the kept batch is
always full and only its composition changes.

The contrast test runs the same data and settings with the labels of the
reward set shuffled: the reward then carries no information, and the same
check must fail.
"""

import dataclasses
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from l2tl_tf import loop, records  # pylint: disable=g-import-not-at-top
from l2tl_tf.config import (Config, DataConfig, Mode, ModelConfig,  # pylint: disable=g-import-not-at-top
                            OptimizerConfig, PolicyConfig)

NUM_TARGET_CLASSES = 4          # = number of planted source classes
NUM_NOISE_CLASSES = 4
NUM_SOURCE_CLASSES = NUM_TARGET_CLASSES + NUM_NOISE_CLASSES
IMAGE_SIZE = 8
SOURCE_PER_CLASS = 150
TARGET_SHOTS = 5                # target training images per class
VAL_PER_CLASS = 150             # reward set D'_T, per class
PATTERN_AMPLITUDE = 20.0        # grey levels around 128
PIXEL_NOISE = 40.0              # std of the per-pixel Gaussian noise
DATA_SEED = 0
RUN_SEED = 0
TRAIN_STEPS = 1000

# What the test asks of the learned lambda: planted classes ordered above noise
# classes in at least this fraction of (planted, noise) pairs (0.5 is chance),
# and the planted mean above the noise mean by at least MIN_MEAN_GAP. A single
# planted class may still trail one noise class in a given run: REINFORCE
# credits 8 simultaneous decisions from one scalar reward per step.
MIN_PAIR_ORDER = 0.75
MIN_MEAN_GAP = 0.2


@dataclasses.dataclass(frozen=True)
class PlantedData:
  source: str
  target_train: str
  target_val: str
  target_val_shuffled: str
  planted: frozenset
  noise: frozenset


def _templates(rng: np.random.Generator) -> np.ndarray:
  """One +-1 pattern of 4x4 blocks per target class, at IMAGE_SIZE px."""
  blocks = rng.choice([-1.0, 1.0], size=(NUM_TARGET_CLASSES, 4, 4))
  return np.kron(blocks, np.ones((IMAGE_SIZE // 4, IMAGE_SIZE // 4)))


def _draw(rng: np.random.Generator, templates: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """uint8 images: 128 + amplitude * pattern + Gaussian pixel noise."""
  images = (128.0 + PATTERN_AMPLITUDE * templates[classes]
            + PIXEL_NOISE * rng.standard_normal((len(classes), IMAGE_SIZE, IMAGE_SIZE)))
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def make_planted_data(root: str, seed: int) -> PlantedData:
  """Writes source, target-train and target-val TFRecords under `root`."""
  rng = np.random.default_rng(seed)
  templates = _templates(rng)
  ids = rng.permutation(NUM_SOURCE_CLASSES)  # planted ids are not 0..K-1
  planted_ids, noise_ids = ids[:NUM_TARGET_CLASSES], ids[NUM_TARGET_CLASSES:]
  images, labels = [], []
  for target_class, source_class in enumerate(planted_ids):
    images.append(_draw(rng, templates, np.full(SOURCE_PER_CLASS, target_class)))
    labels.append(np.full(SOURCE_PER_CLASS, source_class))
  for source_class in noise_ids:
    images.append(_draw(rng, templates, rng.integers(0, NUM_TARGET_CLASSES, SOURCE_PER_CLASS)))
    labels.append(np.full(SOURCE_PER_CLASS, source_class))
  images, labels = np.concatenate(images), np.concatenate(labels)
  order = rng.permutation(len(labels))
  names = [f'{"planted" if c in planted_ids else "noise"}_{c}' for c in range(NUM_SOURCE_CLASSES)]
  source = records.write_image_records(os.path.join(root, 'source', 'train'), images[order],
                                       labels[order], num_shards=2, class_names=names)

  def target_split(name, per_class, shuffle_labels=False):
    classes = rng.permutation(np.repeat(np.arange(NUM_TARGET_CLASSES), per_class))
    split_images = _draw(rng, templates, classes)
    if shuffle_labels:
      classes = rng.permutation(classes)
    return records.write_image_records(os.path.join(root, 'target', name), split_images, classes)

  target_train = target_split('train', TARGET_SHOTS)
  target_val = target_split('val', VAL_PER_CLASS)
  target_val_shuffled = target_split('val_shuffled', VAL_PER_CLASS, shuffle_labels=True)
  return PlantedData(source, target_train, target_val, target_val_shuffled,
                     frozenset(int(c) for c in planted_ids), frozenset(int(c) for c in noise_ids))


def planted_config(data: PlantedData, model_dir: str, target_val: str, seed: int = RUN_SEED,
                   **overrides) -> Config:
  """The L2TL run of the test; `overrides` replace top-level Config fields."""
  config = Config(
      mode=Mode.L2TL,
      model_dir=model_dir,
      seed=seed,
      train_steps=TRAIN_STEPS,
      batch_size=16,                 # B_T
      source_batch_ratio=4.0,        # B_S = 64
      source_batch_multiplier=4,     # M_S: 256 candidates, top 64 by lambda kept
      reward_batch_ratio=16.0,       # B_P = 256
      eval_batch_size=256,
      steps_per_loop=100,
      checkpoint_every=TRAIN_STEPS,
      keep_checkpoints=1,
      data=DataConfig(
          source_train=data.source, target_train=data.target_train, target_val=target_val,
          source_num_classes=NUM_SOURCE_CLASSES, target_num_classes=NUM_TARGET_CLASSES,
          image_size=IMAGE_SIZE, num_channels=1, train_crop='none', random_flip=False,
          shuffle_buffer=2_000),
      model=ModelConfig(backbone='small_cnn'),
      policy=PolicyConfig(
          num_lambda_levels=2,       # lambda in {0, 1}
          num_alpha_levels=100,
          alpha_beta=1.0,
          learning_rate=0.02,
          baseline_decay=0.5,
          reward_metric='auc'),
      optimizer=OptimizerConfig(
          learning_rate=0.3, momentum=0.0, weight_decay=4e-5, warmup_steps=20))
  return dataclasses.replace(config, **overrides)


def separation(ranked, data: PlantedData):
  """(fraction of planted-noise pairs ordered planted first, mean planted - mean noise)."""
  lam = {row.class_id: row.expected_lambda for row in ranked}
  planted = np.array([lam[c] for c in data.planted])
  noise = np.array([lam[c] for c in data.noise])
  pair_order = float(np.mean(planted[:, None] > noise[None, :]))
  return pair_order, float(planted.mean() - noise.mean())


def describe(ranked, data: PlantedData) -> str:
  return ', '.join(f'{"P" if r.class_id in data.planted else "N"}{r.class_id}={r.expected_lambda:.2f}'
                   for r in ranked)


def is_separated(ranked, data: PlantedData) -> bool:
  pair_order, mean_gap = separation(ranked, data)
  return pair_order >= MIN_PAIR_ORDER and mean_gap >= MIN_MEAN_GAP


@pytest.fixture(scope='module')
def planted_data(tmp_path_factory):
  return make_planted_data(str(tmp_path_factory.mktemp('planted_data')), DATA_SEED)


def test_l2tl_ranks_planted_source_classes_above_noise(planted_data, tmp_path):
  config = planted_config(planted_data, str(tmp_path / 'l2tl'), planted_data.target_val)
  result = loop.run_training(config, log=lambda message: None)

  assert result.steps == TRAIN_STEPS
  assert result.ranked_classes is not None
  pair_order, mean_gap = separation(result.ranked_classes, planted_data)
  ranking = describe(result.ranked_classes, planted_data)
  assert pair_order >= MIN_PAIR_ORDER, (
      f'only {pair_order:.2f} of planted-noise pairs ranked planted first: {ranking}')
  assert mean_gap >= MIN_MEAN_GAP, (
      f'planted classes lead noise classes by only {mean_gap:.3f} mean lambda: {ranking}')
  # The reward the policy was trained on is the target-validation AUC: the
  # run must have learned the target for the reward to mean anything.
  assert result.final_metrics['policy/reward'] > 0.8, result.final_metrics


def test_uninformative_reward_does_not_separate(planted_data, tmp_path):
  """Same data and settings, reward labels shuffled: the check above must fail."""
  config = planted_config(planted_data, str(tmp_path / 'l2tl_shuffled'),
                          planted_data.target_val_shuffled)
  result = loop.run_training(config, log=lambda message: None)

  assert result.ranked_classes is not None
  pair_order, mean_gap = separation(result.ranked_classes, planted_data)
  assert not is_separated(result.ranked_classes, planted_data), (
      f'planted classes separated (pairs {pair_order:.2f}, gap {mean_gap:.2f}) although the '
      'reward carried no information: ' + describe(result.ranked_classes, planted_data))
