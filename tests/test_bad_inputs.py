"""The bad-input catalogue of issue #5, one case (or a few variants) per test.

A bad input that can be caught before training must be: the error names the
flag or file, the value at fault and the fix, a fresh --model_dir is not even
created, and a directory holding a good run is left byte for byte as it was.
Faults that only show deep inside a large source (a record past a shard's
first, a diverging loss) stop training with the same kind of message and
never overwrite a good checkpoint.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import striped_images, tiny_config
from l2tl_tf import evaluation, loop, models, preflight, records, runs
from l2tl_tf.config import ModelConfig, OptimizerConfig

SOURCE_CLASSES, TARGET_CLASSES = 8, 4
BAD_IMAGE = b'<html>not an image</html>'


def examples(num_examples: int, num_classes: int, label_offset: int = 0, seed: int = 0):
  """(PNG bytes, stored label) pairs, labels cycling through the classes."""
  labels = np.arange(num_examples) % num_classes
  images = striped_images(labels, np.random.default_rng(seed))
  return [(records.encode_png(image), int(label) + label_offset)
          for image, label in zip(images, labels)]


def write_shards(prefix, shards) -> str:
  """One TFRecord file per list of (encoded image, label); returns their pattern."""
  os.makedirs(os.path.dirname(str(prefix)), exist_ok=True)
  for i, shard in enumerate(shards):
    with tf.io.TFRecordWriter(shard_path(prefix, i, len(shards))) as writer:
      for encoded, label in shard:
        writer.write(records.make_example(encoded, label).SerializeToString())
  return f'{prefix}-*-of-{len(shards):05d}'


def shard_path(prefix, index: int, num_shards: int) -> str:
  return f'{prefix}-{index:05d}-of-{num_shards:05d}'


def dataset_for(flag: str, tmp_path, shards=None) -> str:
  """Three good shards for `flag` (or the given ones), classes as tiny_config expects."""
  classes = SOURCE_CLASSES if flag == 'source_train' else TARGET_CLASSES
  if shards is None:
    good = examples(48, classes)
    shards = [good[i::3] for i in range(3)]
  return write_shards(tmp_path / flag / 'train', shards)


def with_data(config, **changes):
  return dataclasses.replace(config, data=dataclasses.replace(config.data, **changes))


def snapshot(directory) -> dict:
  """Every file below `directory` and its bytes."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


@pytest.fixture(scope='module')
def good_run(tiny_data, tmp_path_factory):
  """A finished run: (its directory, its files' bytes)."""
  model_dir = tmp_path_factory.mktemp('good') / 'run'
  loop.run_training(tiny_config(tiny_data, model_dir, mode='scratch', train_steps=3),
                    log=lambda _: None)
  return str(model_dir), snapshot(model_dir)


def fails_early(config, match: str, good_run=None, strategy=None) -> str:
  """Runs `config` in a fresh dir, then over `good_run`; returns the error text.

  Both attempts must raise ValueError matching `match` before anything is
  written: the fresh dir does not appear, the good run is unchanged.
  """
  with pytest.raises(ValueError, match=match) as raised:
    loop.run_training(config, strategy=strategy, log=lambda _: None)
  assert not os.path.exists(config.model_dir)
  if good_run is not None:
    good_dir, files = good_run
    with pytest.raises(ValueError, match=match):
      loop.run_training(dataclasses.replace(config, model_dir=good_dir), strategy=strategy,
                        log=lambda _: None)
    assert snapshot(good_dir) == files
  return str(raised.value)


def fails_in_training(config, error_type=ValueError) -> str:
  """Runs `config`, which must fail during training; returns the error text."""
  with pytest.raises(error_type) as raised:
    loop.run_training(config, log=lambda _: None)
  assert os.path.exists(os.path.join(config.model_dir, 'config.json'))
  return str(raised.value)


# ------------------------------------------------------------ caught before training

def test_gzip_compressed_shards_are_checked_record_by_record(tiny_data, tmp_path):
  """TFX ExampleGen writes GZIP TFRecords: the full check reads them like plain ones."""
  prefix = tmp_path / 'gzip' / 'train'
  os.makedirs(prefix.parent)
  shards = [examples(10, TARGET_CLASSES), examples(10, TARGET_CLASSES, seed=1)[:7]]
  for i, shard in enumerate(shards):
    with tf.io.TFRecordWriter(shard_path(prefix, i, 2), options='GZIP') as writer:
      for encoded, label in shard:
        writer.write(records.make_example(encoded, label).SerializeToString())
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'),
                     target_train=f'{prefix}-*-of-00002')
  target = preflight.datasets(config)[1]
  assert (target.flag, target.every_record) == ('target_train', True)
  scan = preflight.scan_dataset(target, config.data)
  assert sorted(zip(scan.file_index, scan.position)) == (
      [(0, i) for i in range(10)] + [(1, i) for i in range(7)])
  np.testing.assert_array_equal(np.bincount(scan.labels), [5, 5, 4, 3])


@pytest.mark.parametrize('flag', ['source_train', 'target_train', 'target_val', 'target_test'])
def test_a_pattern_matching_nothing_names_its_flag(tiny_data, tmp_path, good_run, flag):
  missing = str(tmp_path / 'nowhere' / 'train-*')
  # A --target_val replaces the carve-out (giving both is refused).
  carve_out = {'val_examples_per_class': 0} if flag == 'target_val' else {}
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), **{flag: missing}, **carve_out)
  message = fails_early(config, 'matches no file', good_run)
  assert f'--{flag}:' in message and missing in message and 'Check the path' in message


@pytest.mark.parametrize('flag', ['source_train', 'target_train'])
def test_an_empty_shard_is_named(tiny_data, tmp_path, good_run, flag):
  pattern = dataset_for(flag, tmp_path)
  empty = shard_path(tmp_path / flag / 'train', 1, 3)
  open(empty, 'wb').close()
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), **{flag: pattern})
  message = fails_early(config, 'holds no records', good_run)
  assert f'--{flag}={pattern}: {empty} holds no records' in message
  assert 'rewrite it, or delete it' in message


@pytest.mark.parametrize('flag, damage', [
    ('source_train', lambda data: b'garbage, not a TFRecord' * 4),  # unreadable at its start
    ('target_train', lambda data: data[:-7]),  # the last record cut short
])
def test_a_corrupt_tfrecord_file_is_named(tiny_data, tmp_path, good_run, flag, damage):
  pattern = dataset_for(flag, tmp_path)
  corrupt = shard_path(tmp_path / flag / 'train', 2, 3)
  with open(corrupt, 'rb') as f:
    data = f.read()
  with open(corrupt, 'wb') as f:
    f.write(damage(data))
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), **{flag: pattern})
  message = fails_early(config, 'is not a readable TFRecord file', good_run)
  assert f'--{flag}={pattern}: {corrupt} is not a readable TFRecord file' in message
  assert 'record at' in message  # TensorFlow's byte offset of the bad record
  assert 'Rewrite it' in message


@pytest.mark.parametrize('flag, position', [('source_train', 0), ('target_train', 7)])
def test_an_image_that_does_not_decode_is_named_with_its_record(tiny_data, tmp_path, good_run,
                                                                flag, position):
  classes = SOURCE_CLASSES if flag == 'source_train' else TARGET_CLASSES
  shard = examples(40, classes)
  shard[position] = (BAD_IMAGE, 1)
  pattern = dataset_for(flag, tmp_path, [examples(40, classes, seed=1), shard])
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), **{flag: pattern})
  message = fails_early(config, 'does not decode', good_run)
  bad_file = shard_path(tmp_path / flag / 'train', 1, 2)
  assert f'record {position} of {bad_file}: its image does not decode' in message
  assert repr(BAD_IMAGE[:8]) in message and 'Re-encode it as PNG or JPEG' in message


@pytest.mark.parametrize('flag, stored_label, label_offset, shown', [
    ('target_train', 4, 0, 'has label 4, which is 4 after --target_label_offset=0'),
    ('target_train', 0, 1, 'has label 0, which is -1 after --target_label_offset=1'),
    ('source_train', 99, 0, 'has label 99, which is 99 after --source_label_offset=0'),
])
def test_a_label_outside_the_classes_is_named_with_its_record(tiny_data, tmp_path, good_run,
                                                              flag, stored_label, label_offset,
                                                              shown):
  side = flag.split('_')[0]
  classes = SOURCE_CLASSES if side == 'source' else TARGET_CLASSES
  shard = examples(40, classes, label_offset=label_offset)
  position = 9 if side == 'target' else 0  # the source is read one record per shard
  shard[position] = (shard[position][0], stored_label)
  pattern = dataset_for(flag, tmp_path, [shard])
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), **{
      flag: pattern, f'{side}_label_offset': label_offset})
  message = fails_early(config, 'outside', good_run)
  bad_file = shard_path(tmp_path / flag / 'train', 0, 1)
  assert f'record {position} of {bad_file} {shown}, outside [0, {classes})' in message
  assert f'--{side}_num_classes={classes}' in message


def test_one_based_target_labels_suggest_the_offset_flag(tiny_data, tmp_path, good_run):
  pattern = dataset_for('target_train', tmp_path, [examples(40, TARGET_CLASSES, label_offset=1)])
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), target_train=pattern)
  message = fails_early(config, 'looks 1-based', good_run)
  assert f'--target_train={pattern} looks 1-based: its labels run 1..4' in message
  assert 'Pass --target_label_offset=1' in message


def test_a_reward_set_without_some_class_is_refused(tiny_data, tmp_path, good_run):
  val = [example for example in examples(40, TARGET_CLASSES) if example[1] != 3]
  pattern = write_shards(tmp_path / 'val' / 'val', [val])
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), target_val=pattern,
                     val_examples_per_class=0)
  message = fails_early(config, 'has no example of target class 3', good_run)
  assert f'--target_val={pattern} has no example of target class 3' in message
  assert '--val_examples_per_class' in message


@pytest.mark.parametrize('target_classes, examples_per_class, shown', [
    (3, 50, 'Target class 0 has 14 examples in --target_train={} but '
            '--val_examples_per_class=5 + --examples_per_class=50 were asked for'),
    (4, 5, 'Target class 3 has no examples in --target_train={} (so none to train on or '
           'to carve validation examples from)'),
])
def test_a_class_too_small_for_k_shot_or_the_carve_out_is_explained(
    tiny_data, tmp_path, good_run, target_classes, examples_per_class, shown):
  """k larger than a class holds; and a class with no validation examples to carve."""
  pattern = dataset_for('target_train', tmp_path, [examples(42, 3)])
  config = with_data(tiny_config(tiny_data, tmp_path / 'run'), target_train=pattern,
                     target_num_classes=target_classes, examples_per_class=examples_per_class)
  message = fails_early(config, 'Target class', good_run)
  assert shown.format(pattern) in message and 'add examples of class' in message.lower()


@pytest.mark.parametrize('overrides, shown', [
    (dict(mode='scratch', batch_size=3), 'The global target batch of 3 is not divisible by the 2 replicas: '
                         'change --batch_size'),
    # M_S * B_S = 6 splits, but each replica would keep B_S / 2 = 1.5 of its candidates.
    (dict(batch_size=4, source_batch_ratio=0.75, source_batch_multiplier=2),
     'The global kept source batch of 3 is not divisible by the 2 replicas: change '
     '--batch_size or --source_batch_ratio'),
])
def test_a_global_batch_that_does_not_split_over_the_replicas_is_refused(
    tiny_data, tmp_path, good_run, mirrored, overrides, shown):
  config = tiny_config(tiny_data, tmp_path / 'run', **{'mode': 'l2tl', **overrides})
  assert shown in fails_early(config, 'not divisible', good_run, strategy=mirrored)


def test_global_selection_with_first_order_credit_on_two_replicas_is_refused(
    tiny_data, tmp_path, good_run, mirrored):
  config = tiny_config(tiny_data, tmp_path / 'run', mode='l2tl', selection='global')
  config = dataclasses.replace(config, policy=dataclasses.replace(
      config.policy, lambda_credit='first_order'))
  message = fails_early(config, 'selection=global cannot run on 2 replicas', good_run,
                        strategy=mirrored)
  assert 'Use --selection=per_replica' in message
  # Per-replica selection runs.
  result = loop.run_training(dataclasses.replace(config, selection='per_replica'),
                             strategy=mirrored, log=lambda _: None)
  assert result.steps == config.train_steps


def test_an_image_size_the_backbone_cannot_take_is_refused(tiny_data, tmp_path, good_run):
  config = with_data(tiny_config(tiny_data, tmp_path / 'run',
                                 model=ModelConfig(backbone='inception_v3')), image_size=32)
  message = fails_early(config, 'cannot take', good_run)
  assert '--backbone=inception_v3 cannot take --image_size=32: it needs at least 75 px' in message
  assert 'Raise --image_size' in message and 'small_cnn 8' in message


def test_a_missing_backbone_weights_file_is_refused_before_training(tiny_data, tmp_path):
  """It used to fail only in model building, after config.json was written. (A run
  that resumes restores its checkpoint and never reads the file: next tests.)"""
  config = tiny_config(tiny_data, tmp_path / 'run', model=ModelConfig(
      backbone='small_cnn', backbone_weights=str(tmp_path / 'no_such.weights.h5')))
  message = fails_early(config, 'does not exist')
  assert f'--backbone_weights={tmp_path}/no_such.weights.h5 does not exist' in message


def test_a_weights_file_of_another_channel_count_is_refused_before_training(tiny_data, tmp_path):
  """It failed in model building, after config.json was written; the fix was then refused."""
  weights = str(tmp_path / 'rgb.weights.h5')
  models.build_encoder('small_cnn', 16, 3).save_weights(weights)
  config = tiny_config(tiny_data, tmp_path / 'run', model=ModelConfig(
      backbone='small_cnn', backbone_weights=weights))
  message = fails_early(config, 'does not fit')
  assert f'--backbone_weights={weights} does not fit --backbone=small_cnn with --num_channels=1' \
      in message


def test_a_run_started_from_a_weights_file_evaluates_without_it(tiny_data, tmp_path):
  """The checkpoint holds every weight: evaluation (and export, ranking, DATL) must
  not need the starting file, which may have stayed on the training machine."""
  weights = str(tmp_path / 'start.weights.h5')
  models.build_encoder('small_cnn', 16, 1).save_weights(weights)
  config = tiny_config(tiny_data, tmp_path / 'run', mode='scratch', train_steps=3,
                       model=ModelConfig(backbone='small_cnn', backbone_weights=weights))
  loop.run_training(config, log=lambda _: None)
  before = evaluation.evaluate(config.model_dir, 'test')
  os.remove(weights)
  assert evaluation.evaluate(config.model_dir, 'test')['top1'] == before['top1']


def test_a_run_resumes_after_its_starting_weights_file_is_gone(tiny_data, tmp_path):
  """Resume refused: preflight wanted the file, and dropping the flag was 'other settings'."""
  weights = str(tmp_path / 'start.weights.h5')
  models.build_encoder('small_cnn', 16, 1).save_weights(weights)
  config = tiny_config(tiny_data, tmp_path / 'run', mode='scratch', train_steps=2,
                       model=ModelConfig(backbone='small_cnn', backbone_weights=weights))
  loop.run_training(config, log=lambda _: None)
  os.remove(weights)
  assert loop.run_training(dataclasses.replace(config, train_steps=4),
                           log=lambda _: None).steps == 4
  without_flag = dataclasses.replace(config, train_steps=6, model=ModelConfig(backbone='small_cnn'))
  assert loop.run_training(without_flag, log=lambda _: None).steps == 6


@pytest.fixture(scope='module')
def scratch_run(tiny_data, tmp_path_factory) -> str:
  """A finished scratch run that evaluation may write metrics.json into."""
  model_dir = tmp_path_factory.mktemp('evaluated') / 'run'
  loop.run_training(tiny_config(tiny_data, model_dir, mode='scratch', train_steps=3),
                    log=lambda _: None)
  return str(model_dir)


def test_evaluating_a_one_based_test_file_is_refused_with_the_offset_hint(tmp_path,
                                                                          scratch_run):
  """Preflight reads only the test file's first record; evaluation used to score
  label 4 of 4 classes as a mistake and report a silently wrong top-1."""
  test = write_shards(tmp_path / 'test' / 'test', [examples(12, TARGET_CLASSES,
                                                            label_offset=1)])
  with pytest.raises(ValueError, match=r'The test split has 3 of 12 labels outside \[0, 4\)') \
      as raised:
    evaluation.evaluate(scratch_run, 'test', target_test=test)
  assert 'rerun with --target_label_offset=1' in str(raised.value)


def test_metrics_of_a_one_class_test_file_are_valid_json(tmp_path, scratch_run):
  """No class has both positives and negatives: the AUC is null, not a bare NaN."""
  test = write_shards(tmp_path / 'test' / 'test', [examples(6, 1)])
  metrics = evaluation.evaluate(scratch_run, 'test', target_test=test)
  assert metrics['mean_auc'] is None
  with open(os.path.join(scratch_run, evaluation.METRICS_FILE), encoding='utf-8') as f:
    assert json.load(f, parse_constant=pytest.fail)['mean_auc'] is None


def fake_checkpoint(directory, encoder, source_classes: int) -> str:
  """A pretrain-style checkpoint of `encoder` and a source head."""
  head = keras.layers.Dense(source_classes)
  head(encoder(tf.zeros([1] + list(encoder.input_shape[1:]))))
  tf.train.Checkpoint(encoder=encoder, source_head=head).save(str(directory / 'ckpt'))
  return str(directory)


def test_warm_start_from_another_class_count_names_both_settings(tiny_data, tmp_path):
  pretrained = fake_checkpoint(tmp_path / 'pretrained', models.build_encoder('small_cnn', 16, 1),
                               source_classes=5)
  pretrained_config = with_data(tiny_config(tiny_data, pretrained), source_num_classes=5)
  (tmp_path / 'pretrained' / 'config.json').write_text(pretrained_config.to_json())
  config = tiny_config(tiny_data, tmp_path / 'run', warm_start_from=pretrained)
  message = fails_early(config, 'Cannot warm start')
  assert f'--warm_start_from={pretrained}' in message
  assert ('that run was trained with --source_num_classes=5 but this run has '
          '--backbone=small_cnn --num_channels=1 --source_num_classes=8') in message
  assert 'drop --warm_start_from' in message


def test_warm_start_from_another_architecture_is_refused(tiny_data, tmp_path):
  inputs = keras.Input((16, 16, 1))
  other = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(
      keras.layers.Conv2D(8, 3)(inputs)))
  pretrained = fake_checkpoint(tmp_path / 'foreign', other, source_classes=8)
  config = tiny_config(tiny_data, tmp_path / 'run', warm_start_from=pretrained)
  message = fails_early(config, 'Cannot warm start')
  assert f'--warm_start_from={pretrained}' in message
  assert 'its variables do not fit this run (--backbone=small_cnn' in message


def test_a_model_dir_holding_a_run_with_other_settings_is_left_untouched(tiny_data, tmp_path,
                                                                         good_run):
  good_dir, files = good_run
  config = tiny_config(tiny_data, good_dir, mode='scratch', train_steps=3,
                       optimizer=OptimizerConfig(learning_rate=0.5, warmup_steps=1))
  with pytest.raises(ValueError, match='holds a run with other settings') as raised:
    loop.run_training(config, log=lambda _: None)
  assert 'optimizer.learning_rate: 0.05 -> 0.5' in str(raised.value)
  assert 'Use a new --model_dir' in str(raised.value)
  assert snapshot(good_dir) == files


def test_a_run_that_failed_before_its_first_checkpoint_retries_with_other_settings(tiny_data,
                                                                                  tmp_path):
  """Nothing was trained to keep, yet the corrected command was refused as 'other settings'."""
  failed = tiny_config(tiny_data, tmp_path / 'run', mode='scratch', train_steps=3,
                       optimizer=OptimizerConfig(learning_rate=1e30, warmup_steps=1))
  fails_in_training(failed, FloatingPointError)
  assert not tf.train.latest_checkpoint(failed.model_dir)
  lines = []
  fixed = dataclasses.replace(failed, optimizer=OptimizerConfig(learning_rate=0.05,
                                                                warmup_steps=1))
  assert loop.run_training(fixed, log=lines.append).steps == 3
  assert lines[0].startswith('The run in this --model_dir stopped before its first checkpoint: '
                             'starting over with changed settings: optimizer.learning_rate: '
                             '1e+30 -> 0.05.')
  assert runs.load_config(fixed.model_dir) == fixed


# ------------------------------------------------------------ met during training

def source_with_a_bad_later_shard(tmp_path, bad_shard) -> str:
  """Two source shards whose first records are good (so training starts)."""
  return dataset_for('source_train', tmp_path, [examples(16, SOURCE_CLASSES), bad_shard])


def test_a_truncated_source_shard_met_in_training_is_named(tiny_data, tmp_path):
  pattern = source_with_a_bad_later_shard(tmp_path, examples(16, SOURCE_CLASSES, seed=1))
  bad_file = shard_path(tmp_path / 'source_train' / 'train', 1, 2)
  with open(bad_file, 'rb') as f:
    data = f.read()
  with open(bad_file, 'wb') as f:
    f.write(data[:-7])
  config = with_data(tiny_config(tiny_data, tmp_path / 'run', mode='pretrain'),
                     source_train=pattern)
  message = fails_in_training(config)
  assert f'{bad_file} is not a readable TFRecord file (truncated record at' in message
  assert 'Met during training, in steps 1-3' in message


def test_an_undecodable_source_image_met_in_training_is_named(tiny_data, tmp_path):
  bad_shard = examples(16, SOURCE_CLASSES, seed=1)
  bad_shard[1:] = [(BAD_IMAGE, label) for _, label in bad_shard[1:]]
  pattern = source_with_a_bad_later_shard(tmp_path, bad_shard)
  config = with_data(tiny_config(tiny_data, tmp_path / 'run', mode='l2tl'),
                     source_train=pattern)
  message = fails_in_training(config)
  bad_file = shard_path(tmp_path / 'source_train' / 'train', 1, 2)
  assert f'record 1 of {bad_file}: its image does not decode' in message
  assert 'Met during training' in message


def test_one_based_source_labels_met_in_training_suggest_the_offset_flag(tiny_data, tmp_path):
  """The shards' first labels (1 and 2) fit 8 classes; label 8 shows up in training."""
  shards = [examples(16, SOURCE_CLASSES, label_offset=1, seed=s) for s in range(2)]
  shards[1] = shards[1][1:] + shards[1][:1]
  pattern = dataset_for('source_train', tmp_path, shards)
  config = with_data(tiny_config(tiny_data, tmp_path / 'run', mode='pretrain'),
                     source_train=pattern)
  message = fails_in_training(config)
  assert f'--source_train={pattern} looks 1-based' in message
  assert 'Pass --source_label_offset=1' in message


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_data,
                                                                            tmp_path):
  """Warm-up gives step 1 a zero rate; the huge rate after it makes the loss NaN."""
  config = tiny_config(tiny_data, tmp_path / 'run', mode='scratch', train_steps=8,
                       steps_per_loop=2, checkpoint_every=2,
                       optimizer=OptimizerConfig(learning_rate=1e30, warmup_steps=4))
  message = fails_in_training(config, FloatingPointError)
  good = tf.train.latest_checkpoint(config.model_dir)
  assert good.endswith('ckpt-2')
  assert 'the mean loss/total over steps 3-4 is nan' in message
  assert f'the last good checkpoint, {good}, is kept' in message
  assert 'Lower --learning_rate (now 1e+30)' in message
  reader = tf.train.load_checkpoint(good)
  for name, dtype in reader.get_variable_to_dtype_map().items():
    if dtype.is_floating:
      assert np.isfinite(reader.get_tensor(name)).all(), name


def test_weights_that_are_not_finite_are_never_checkpointed(tiny_data, tmp_path):
  """NaN BatchNorm statistics do not touch the training loss, only the weights."""
  encoder = models.build_encoder('small_cnn', 16, 1)
  for variable in encoder.non_trainable_variables:
    variable.assign(tf.fill(variable.shape, np.nan))
  pretrained = fake_checkpoint(tmp_path / 'nan_stats', encoder, source_classes=8)
  config = tiny_config(tiny_data, tmp_path / 'run', mode='finetune', warm_start_from=pretrained)
  message = fails_in_training(config, FloatingPointError)
  assert 'the weights after step 3 are not finite' in message
  assert 'there is no earlier checkpoint' in message
  assert f'check the inputs of those steps and --warm_start_from={pretrained}' in message
  assert tf.train.latest_checkpoint(config.model_dir) is None


def test_a_checkpoint_without_this_runs_state_is_explained(tiny_data, tmp_path):
  """An Adam-credit run checkpointed before the lazy Adam (another optimizer state)
  failed to resume with a bare 'Found 3 Python objects that were not bound'."""
  sgd = tiny_config(tiny_data, tmp_path / 'run', train_steps=2)
  sgd = dataclasses.replace(sgd, policy=dataclasses.replace(
      sgd.policy, lambda_credit='first_order', credit_optimizer='sgd'))
  loop.run_training(sgd, log=lambda _: None)
  adam = dataclasses.replace(sgd, train_steps=4, policy=dataclasses.replace(
      sgd.policy, credit_optimizer='adam'))
  (tmp_path / 'run' / 'config.json').write_text(adam.to_json())  # as an older version wrote it
  with pytest.raises(ValueError, match='lacks state this run keeps.*older l2tl_tf'):
    loop.run_training(adam, log=lambda _: None)
