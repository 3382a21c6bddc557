"""Shared fixtures: two logical CPU devices and tiny ImageNet-style TFRecords.

The CPU is split before TensorFlow initialises, so every test process can
build a MirroredStrategy over two replicas ('/cpu:0', '/cpu:1').
"""

import dataclasses
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from l2tl_tf import records, strategy  # pylint: disable=g-import-not-at-top
from l2tl_tf.config import Config, DataConfig, Mode, ModelConfig, OptimizerConfig, PolicyConfig  # pylint: disable=g-import-not-at-top

strategy.split_cpu(2)

IMAGE_SIZE = 16


def read_records(pattern: str):
  """Decoded uint8 [N, H, W] images and int labels of a grayscale TFRecord pattern."""
  from l2tl_tf import input_pipeline  # pylint: disable=g-import-not-at-top
  images, labels = [], []
  for encoded, label in input_pipeline.raw_dataset(pattern, DataConfig(), 0).as_numpy_iterator():
    images.append(tf.io.decode_png(encoded).numpy()[..., 0])
    labels.append(label)
  return np.stack(images), np.array(labels)


def striped_images(labels: np.ndarray, rng: np.random.Generator, channels: int = 0):
  """Noise images with a bright band whose row depends on the label."""
  shape = (len(labels), IMAGE_SIZE, IMAGE_SIZE) + ((channels,) if channels else ())
  images = (rng.random(shape) * 60).astype(np.uint8)
  for i, label in enumerate(labels):
    row = (int(label) * 3) % (IMAGE_SIZE - 2)
    images[i, row:row + 2] = 255
  return images


@pytest.fixture(scope='session')
def mirrored():
  """One MirroredStrategy over '/cpu:0' and '/cpu:1' for the whole session.

  Several MirroredStrategy objects in one process reuse collective instance
  keys, and a later all-reduce can then meet an earlier one's shapes
  ("Shape mismatch in the collective instance"): share one.
  """
  return strategy.get_strategy('mirrored')


@dataclasses.dataclass(frozen=True)
class TinyData:
  source: str
  target: str
  target_test: str
  source_classes: int = 8
  target_classes: int = 4


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> TinyData:
  """8-class source and 4-class target TFRecords of 16x16 grayscale PNGs."""
  root = tmp_path_factory.mktemp('tiny')
  rng = np.random.default_rng(0)
  source_labels = np.arange(160) % 8
  target_labels = np.arange(80) % 4
  test_labels = np.arange(40) % 4
  return TinyData(
      source=records.write_image_records(
          str(root / 'source' / 'train'), striped_images(source_labels, rng), source_labels,
          num_shards=2, class_names=[f'class_{i}' for i in range(8)]),
      target=records.write_image_records(
          str(root / 'target' / 'train'), striped_images(target_labels, rng), target_labels),
      target_test=records.write_image_records(
          str(root / 'target' / 'test'), striped_images(test_labels, rng), test_labels))


def tiny_config(data: TinyData, model_dir, mode='l2tl', **overrides) -> Config:
  """A config that trains in seconds on `tiny_data`."""
  data_config = DataConfig(
      source_train=data.source, target_train=data.target, target_test=data.target_test,
      source_num_classes=data.source_classes, target_num_classes=data.target_classes,
      image_size=IMAGE_SIZE, num_channels=1, examples_per_class=5, val_examples_per_class=5,
      random_flip=False, shuffle_buffer=64)
  values = dict(mode=Mode(mode), model_dir=str(model_dir), train_steps=6, batch_size=4,
                steps_per_loop=3, checkpoint_every=3, eval_batch_size=16, data=data_config,
                model=ModelConfig(backbone='small_cnn'),
                policy=PolicyConfig(learning_rate=0.01),
                optimizer=OptimizerConfig(learning_rate=0.05, warmup_steps=1))
  values.update(overrides)
  return Config(**values)


@pytest.fixture(scope='session')
def pretrained(tiny_data, tmp_path_factory) -> str:
  """A pretrain run on the tiny source, for warm starts."""
  from l2tl_tf import loop  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path_factory.mktemp('pretrain')
  loop.run_training(tiny_config(tiny_data, model_dir, mode='pretrain'), log=lambda _: None)
  return str(model_dir)


def tiny_flagfile(data: TinyData, path) -> str:
  """A flagfile for the binaries with the settings of `tiny_config`."""
  path.write_text('\n'.join([
      f'--source_train={data.source}', f'--target_train={data.target}',
      f'--target_test={data.target_test}', '--source_num_classes=8',
      '--target_num_classes=4', f'--image_size={IMAGE_SIZE}', '--num_channels=1',
      '--backbone=small_cnn', '--batch_size=4', '--train_steps=4', '--steps_per_loop=2',
      '--checkpoint_every=2', '--warmup_steps=1', '--learning_rate=0.05',
      '--examples_per_class=5', '--val_examples_per_class=5', '--norandom_flip']) + '\n')
  return str(path)


def binary_command(name: str, *args) -> list:
  return [sys.executable, '-m', f'l2tl_tf.{name}', *args]


QUIET_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')


def load_benchmark(filename: str):
  """benchmarks/<filename> as a module, loaded once (benchmarks define absl flags)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  name = 'benchmarks_' + os.path.splitext(filename)[0]
  if name not in sys.modules:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(root, 'benchmarks', filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]
