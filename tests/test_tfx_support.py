"""The TFX glue without TFX: fn_args -> Config, GZIP TFRecords, the module file.

`test_tfx.py` runs the real pipeline in the TFX environment; these tests run
in the main one, calling the Trainer module's `run_fn` as TFX would.
"""

import importlib.util
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from conftest import IMAGE_SIZE, striped_images
from l2tl_tf import input_pipeline, loop, records, tfx_support
from l2tl_tf.config import DataConfig, Mode

TINY_CUSTOM_CONFIG = {
    'mode': 'l2tl', 'source_num_classes': 8, 'target_num_classes': 4,
    'image_size': IMAGE_SIZE, 'num_channels': 1, 'backbone': 'small_cnn', 'train_steps': 4,
    'batch_size': 4, 'steps_per_loop': 2, 'checkpoint_every': 2, 'warmup_steps': 1,
    'learning_rate': 0.05, 'random_flip': False, 'shuffle_buffer': 64}


def gzip_copy(pattern, path):
  """The records of `pattern` rewritten GZIP-compressed, as ExampleGen writes them."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path, options='GZIP') as writer:
    for record in tf.data.TFRecordDataset(input_pipeline.list_files(pattern)):
      writer.write(record.numpy())
  return path


def test_custom_config_values_become_the_config(tmp_path):
  config = tfx_support.config_from_trainer_args(
      ['/gen/Split-train/*'], ['/gen/Split-eval/*'],
      dict(TINY_CUSTOM_CONFIG, source_train='/src/train-*', alpha_beta=0.25),
      str(tmp_path / 'run'))
  assert config.mode is Mode.L2TL and config.train_steps == 4
  assert config.model_dir == str(tmp_path / 'run')
  assert config.data.target_train == '/gen/Split-train/*'
  assert config.data.target_val == '/gen/Split-eval/*'
  assert config.data.source_train == '/src/train-*'
  assert config.data.image_size == IMAGE_SIZE and config.data.random_flip is False
  assert config.policy.alpha_beta == 0.25 and config.model.backbone == 'small_cnn'
  # Unset flags keep the library's defaults.
  assert config.policy.num_lambda_levels == 11


def test_train_args_num_steps_sets_train_steps_and_must_agree(tmp_path):
  values = {k: v for k, v in TINY_CUSTOM_CONFIG.items() if k != 'train_steps'}
  config = tfx_support.config_from_trainer_args(['a'], ['b'], values, str(tmp_path), 7)
  assert config.train_steps == 7
  with pytest.raises(ValueError, match=r'train_steps=4 but TrainArgs\(num_steps=7\)'):
    tfx_support.config_from_trainer_args(['a'], ['b'], TINY_CUSTOM_CONFIG, str(tmp_path), 7)


@pytest.mark.parametrize('name', ['target_train', 'target_val', 'model_dir'])
def test_custom_config_may_not_set_what_the_pipeline_decides(tmp_path, name):
  with pytest.raises(ValueError, match=f'custom_config sets {name}=.*remove {name}'):
    tfx_support.config_from_trainer_args(['a'], ['b'], {name: '/x'}, str(tmp_path))


def test_unknown_flag_or_bad_value_names_custom_config(tmp_path):
  with pytest.raises(ValueError, match='custom_config.*no_such_flag'):
    tfx_support.config_from_trainer_args(['a'], ['b'], {'no_such_flag': 1}, str(tmp_path))
  with pytest.raises(ValueError, match='custom_config.*mode'):
    tfx_support.config_from_trainer_args(['a'], ['b'], {'mode': 'bogus'}, str(tmp_path))


def test_tfx_cloud_keys_and_null_values_are_not_flags(tmp_path):
  """Vertex training failed on TFX's own keys; JSON null became the string 'None'."""
  config = tfx_support.config_from_trainer_args(
      ['a'], ['b'], dict(TINY_CUSTOM_CONFIG, ai_platform_enable_vertex=True,
                         ai_platform_vertex_region='us-central1',
                         ai_platform_training_args={'project': 'p'},
                         tfds_data_dir=None, target_test=None),
      str(tmp_path))
  assert config.data.tfds_data_dir == DataConfig().tfds_data_dir
  assert config.data.target_test == DataConfig().target_test


def test_a_split_with_several_patterns_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"fn_args.train_files = \['a', 'b'\]"):
    tfx_support.config_from_trainer_args(['a', 'b'], ['c'], {}, str(tmp_path))


def test_gzip_tfrecords_read_like_plain_ones_by_their_bytes(tiny_data, tmp_path):
  # No .gz suffix: the reader must look at the bytes, not the name.
  compressed = gzip_copy(tiny_data.target, str(tmp_path / 'gen' / 'data_tfrecord-00000'))
  assert input_pipeline.tfrecord_compression_type([compressed]) == 'GZIP'
  assert input_pipeline.tfrecord_compression_type(
      input_pipeline.list_files(tiny_data.target)) == ''
  plain = list(input_pipeline.raw_dataset(tiny_data.target, DataConfig(), 0).as_numpy_iterator())
  gzipped = list(input_pipeline.raw_dataset(compressed, DataConfig(), 0).as_numpy_iterator())
  assert len(gzipped) == len(plain) == 80
  assert all(a[0] == b[0] and a[1] == b[1] for a, b in zip(plain, gzipped))


def test_a_pattern_mixing_gzip_and_plain_files_is_refused(tiny_data, tmp_path):
  mixed = tmp_path / 'mixed'
  gzip_copy(tiny_data.target, str(mixed / 'part-0'))
  labels = np.arange(4)
  records.write_image_records(str(mixed / 'part-1'),
                              striped_images(labels, np.random.default_rng(0)), labels)
  with pytest.raises(ValueError, match='part-0 is GZIP-compressed but .*part-1.* is not'):
    input_pipeline.raw_dataset(str(mixed / 'part-*'), DataConfig(), 0)


def load_trainer_module():
  spec = importlib.util.spec_from_file_location('trainer_module', tfx_support.TRAINER_MODULE_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_trainer_module_file_is_alone_in_its_directory():
  # TFX packages every .py file of the module file's directory into a wheel.
  assert [f for f in os.listdir(tfx_support.TRAINER_MODULE_DIR) if f.endswith('.py')] == [
      os.path.basename(tfx_support.TRAINER_MODULE_FILE)]


def test_run_fn_stopped_by_sigterm_fails_and_exports_nothing(tmp_path, monkeypatch):
  """A preempted run returned normally: the Pusher pushed the half-trained model."""
  module = load_trainer_module()
  monkeypatch.setattr(module.loop, 'run_training', lambda config: loop.TrainResult(
      config.model_dir, 2, {}, 1.0, preempted=True))
  exported = []
  monkeypatch.setattr(module.serving, 'export_saved_model', lambda *args: exported.append(args))
  fn_args = types.SimpleNamespace(
      train_files=['a'], eval_files=['b'], custom_config=dict(TINY_CUSTOM_CONFIG),
      model_run_dir=str(tmp_path / 'model_run'), serving_model_dir=str(tmp_path / 'serving'),
      train_steps=None)
  with pytest.raises(RuntimeError, match='stopped by SIGTERM at step 2 of 4: nothing exported'):
    module.run_fn(fn_args)
  assert not exported


def test_run_fn_trains_on_example_gen_output_and_exports_both_signatures(tiny_data, tmp_path):
  """run_fn as the TFX Trainer calls it, on GZIP splits like ExampleGen's."""
  fn_args = types.SimpleNamespace(
      train_files=[os.path.dirname(gzip_copy(tiny_data.target, str(
          tmp_path / 'examples' / 'Split-train' / 'data_tfrecord-00000-of-00001.gz'))) + '/*'],
      eval_files=[os.path.dirname(gzip_copy(tiny_data.target_test, str(
          tmp_path / 'examples' / 'Split-eval' / 'data_tfrecord-00000-of-00001.gz'))) + '/*'],
      custom_config=dict(TINY_CUSTOM_CONFIG, source_train=tiny_data.source),
      model_run_dir=str(tmp_path / 'model_run'), serving_model_dir=str(tmp_path / 'serving'),
      train_steps=None)
  load_trainer_module().run_fn(fn_args)

  assert tf.train.latest_checkpoint(fn_args.model_run_dir).endswith('ckpt-4')
  assert os.path.exists(os.path.join(fn_args.model_run_dir, 'source_class_weights.csv'))
  loaded = tf.saved_model.load(fn_args.serving_model_dir)
  assert {'serving_default', 'serving_examples'} <= set(loaded.signatures)
  encoded = [records.encode_png(image) for image in
             striped_images(np.arange(4), np.random.default_rng(3))]
  examples = [records.make_example(e, 0).SerializeToString() for e in encoded]
  by_images = loaded.signatures['serving_default'](images=tf.constant(encoded))
  by_examples = loaded.signatures['serving_examples'](examples=tf.constant(examples))
  assert by_images['probabilities'].shape == (4, 4)
  np.testing.assert_allclose(by_images['probabilities'], by_examples['probabilities'],
                             rtol=1e-6)
