"""Input pipelines on tiny TFRecords written here and on tfds mock data."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import IMAGE_SIZE, striped_images, tiny_config
from l2tl_tf import input_pipeline, records
from l2tl_tf.config import Config, DataConfig, Mode


def test_parse_spec_tells_tfrecords_from_tfds():
  assert not input_pipeline.parse_spec('/data/train-*').is_tfds
  spec = input_pipeline.parse_spec('tfds:imagenet2012_subset/1pct/train[:10%]')
  assert (spec.tfds_name, spec.tfds_split) == ('imagenet2012_subset/1pct', 'train[:10%]')
  with pytest.raises(ValueError, match='tfds:NAME/SPLIT'):
    input_pipeline.parse_spec('tfds:mnist')
  with pytest.raises(ValueError, match='Empty dataset spec'):
    input_pipeline.parse_spec('')


def test_pattern_matching_nothing_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='matches no file'):
    input_pipeline.list_files(str(tmp_path / 'nothing-*'))


def test_label_offset_makes_one_based_labels_zero_based(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.array([0, 1, 2, 1])
  pattern = records.write_image_records(str(tmp_path / 'imagenet'), striped_images(labels, rng),
                                        labels, label_offset=1)
  stored = input_pipeline.scan_labels(pattern, DataConfig(), label_offset=0)
  np.testing.assert_array_equal(stored, labels + 1)
  np.testing.assert_array_equal(input_pipeline.scan_labels(pattern, DataConfig(), 1), labels)


@pytest.mark.parametrize('stored_channels, wanted', [(0, 3), (3, 1), (3, 3), (0, 1)])
def test_grayscale_and_rgb_decode_to_the_encoder_channels(stored_channels, wanted):
  rng = np.random.default_rng(0)
  image = striped_images(np.array([1]), rng, stored_channels)[0]
  encoded = records.encode_png(image)
  decoded = input_pipeline.decode_image(tf.constant(encoded), wanted)
  assert decoded.shape == (IMAGE_SIZE, IMAGE_SIZE, wanted)


@pytest.mark.parametrize('crop', ['inception', 'pad_crop', 'none'])
def test_train_preprocessing_shapes_range_and_determinism(crop):
  data = DataConfig(image_size=12, num_channels=3, train_crop=crop)
  image = tf.constant(np.random.default_rng(0).integers(0, 255, (20, 30, 3)), tf.uint8)
  seed = tf.constant([1, 2], tf.int64)
  first = input_pipeline.preprocess_train(image, seed, data)
  assert first.shape == (12, 12, 3)
  assert 0.0 <= float(tf.reduce_min(first)) and float(tf.reduce_max(first)) <= 1.0
  np.testing.assert_array_equal(first, input_pipeline.preprocess_train(image, seed, data))


@pytest.mark.parametrize('crop, flip', [('pad_crop', True), ('pad_crop', False), ('none', True)])
def test_train_augmentation_follows_tf_image_random_crop_and_flip(crop, flip):
  """Runs made when the per-image path called tf.image's ops reproduce exactly."""
  data = DataConfig(image_size=12, num_channels=3, train_crop=crop, random_flip=flip)
  image = tf.constant(np.random.default_rng(0).integers(0, 255, (20, 30, 3)), tf.uint8)
  for seed in ([1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]):
    seed = tf.constant(seed, tf.int64)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    expected = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [12, 12])
    if crop == 'pad_crop':
      expected = tf.image.stateless_random_crop(
          tf.pad(expected, [[1, 1], [1, 1], [0, 0]]), [12, 12, 3], crop_seed)
    if flip:
      expected = tf.image.stateless_random_flip_left_right(expected, flip_seed)
    np.testing.assert_array_equal(input_pipeline.preprocess_train(image, seed, data),
                                  tf.clip_by_value(expected, 0.0, 1.0))


def test_auto_crop_picks_inception_only_for_large_images():
  assert input_pipeline.resolved_crop(DataConfig(image_size=299)) == 'inception'
  assert input_pipeline.resolved_crop(DataConfig(image_size=28)) == 'pad_crop'


def test_eval_preprocessing_is_a_central_crop_for_large_images():
  data = DataConfig(image_size=224, num_channels=1, train_crop='inception')
  image = np.zeros((256, 256, 1), np.uint8)
  image[:16] = 255  # a border band that the 87.5% central crop removes
  out = input_pipeline.preprocess_eval(tf.constant(image), data)
  assert out.shape == (224, 224, 1)
  assert float(tf.reduce_max(out)) == 0.0


def test_target_subsets_are_seeded_disjoint_and_k_per_class():
  labels = np.repeat(np.arange(3), 12)
  a = input_pipeline.choose_target_subsets(labels, 3, examples_per_class=4,
                                           val_examples_per_class=5, seed=7)
  b = input_pipeline.choose_target_subsets(labels, 3, 4, 5, seed=7)
  c = input_pipeline.choose_target_subsets(labels, 3, 4, 5, seed=8)
  np.testing.assert_array_equal(a.train_indices, b.train_indices)
  assert not np.array_equal(a.train_indices, c.train_indices)
  assert not set(a.train_indices) & set(a.val_indices)
  np.testing.assert_array_equal(np.bincount(labels[a.train_indices]), [4, 4, 4])
  np.testing.assert_array_equal(np.bincount(labels[a.val_indices]), [5, 5, 5])


def test_target_subsets_reject_bad_labels_and_small_classes():
  with pytest.raises(ValueError, match='label 3 outside'):
    input_pipeline.choose_target_subsets(np.array([0, 1, 3]), 3, 0, 0, 0)
  with pytest.raises(ValueError, match='Target class 1 has 2 examples'):
    input_pipeline.choose_target_subsets(np.array([0, 0, 0, 1, 1]), 2, 2, 1, 0)


def test_streams_have_the_step_batch_shapes(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path, source_decode='pipeline')
  subsets = input_pipeline.target_subsets(config)
  source_images, source_labels = next(iter(input_pipeline.source_dataset(config)))
  assert source_images.shape == (5 * 4, IMAGE_SIZE, IMAGE_SIZE, 1)  # M_S * B_S
  assert source_labels.dtype == tf.int32
  encoded, labels, seeds = next(iter(input_pipeline.source_dataset(
      dataclasses.replace(config, source_decode='after_select'))))
  assert encoded.dtype == tf.string and encoded.shape == (5 * 4,)
  assert seeds.shape == (5 * 4, 2)
  np.testing.assert_array_equal(labels, source_labels)
  target_images, _ = next(iter(input_pipeline.target_train_dataset(config, subsets)))
  assert target_images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 1)
  reward_images, _ = next(iter(input_pipeline.reward_dataset(config, subsets)))
  assert reward_images.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 1)  # B_P = 4 * B_T


def test_decoding_after_selection_gives_the_pipeline_images(tiny_data, tmp_path):
  """The step's decode of chosen candidates equals tf.data's decode of them all."""
  config = tiny_config(tiny_data, tmp_path, source_decode='pipeline')
  decoded, decoded_labels = next(iter(input_pipeline.source_dataset(config, start_step=3)))
  encoded, labels, seeds = next(iter(input_pipeline.source_dataset(
      dataclasses.replace(config, source_decode='after_select'), start_step=3)))
  chosen = tf.constant([7, 0, 19, 3])
  images = input_pipeline.decode_and_augment(tf.gather(encoded, chosen),
                                             tf.gather(seeds, chosen), config.data)
  np.testing.assert_array_equal(images, tf.gather(decoded, chosen))
  np.testing.assert_array_equal(tf.gather(labels, chosen), tf.gather(decoded_labels, chosen))


STREAM_CASES = {
    'source, per-replica selection': (
        dict(selection='per_replica'),
        lambda config, subsets, context, start: input_pipeline.source_dataset(
            config, context, start)),
    'source, decoded in tf.data': (
        dict(source_decode='pipeline', selection='per_replica'),
        lambda config, subsets, context, start: input_pipeline.source_dataset(
            config, context, start)),
    'source, global selection': (
        dict(selection='global'),
        lambda config, subsets, context, start: input_pipeline.source_dataset(
            config, context, start)),
    'target': ({}, lambda config, subsets, context, start: input_pipeline.target_train_dataset(
        config, subsets, context, start)),
    'reward': ({}, lambda config, subsets, context, start: input_pipeline.reward_dataset(
        config, subsets, context, start)),
}


@pytest.mark.parametrize('case', list(STREAM_CASES))
def test_a_resumed_pipeline_feeding_two_replicas_continues_where_it_stood(tiny_data, tmp_path,
                                                                         case):
  """One pipeline feeding two replicas (MirroredStrategy, TPUStrategy) yields two
  batches a step, so resuming at step s must skip 2s batches, not s."""
  changes, make = STREAM_CASES[case]
  config = tiny_config(tiny_data, tmp_path, **changes)
  subsets = input_pipeline.target_subsets(config)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  uninterrupted = list(make(config, subsets, context, 0).take(6))  # steps 0-2, 2 batches each
  resumed = list(make(config, subsets, context, 2).take(2))  # step 2
  for fresh, again in zip(uninterrupted[4:], resumed, strict=True):
    for x, y in zip(fresh, again, strict=True):
      np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('pipelines', [1, 2])
def test_in_memory_target_stream_equals_decoding_each_image(tiny_data, tmp_path, monkeypatch,
                                                            pipelines):
  """Gathering from the resized subset gives the batches per-image decoding gives."""
  config = tiny_config(tiny_data, tmp_path)
  subsets = input_pipeline.target_subsets(config)
  context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                       input_pipeline_id=pipelines - 1,
                                       num_replicas_in_sync=pipelines)

  def batches():
    return list(input_pipeline.target_train_dataset(config, subsets, context,
                                                    start_step=3).take(6))
  assert input_pipeline._resized_target_fits(config, len(subsets.train_indices))
  in_memory = batches()
  monkeypatch.setattr(input_pipeline, 'TARGET_IN_MEMORY_BYTES', 0)
  assert not input_pipeline._resized_target_fits(config, len(subsets.train_indices))
  for (images, labels), (decoded, decoded_labels) in zip(in_memory, batches(), strict=True):
    np.testing.assert_array_equal(images, decoded)
    np.testing.assert_array_equal(labels, decoded_labels)


@pytest.mark.parametrize('global_seed', [None, 3])
@pytest.mark.parametrize('batch_size, start_step', [(3, 0), (3, 5), (64, 2)])
def test_seed_batches_equal_dataset_random_cut_into_batches(batch_size, start_step,
                                                            global_seed):
  """The computed seed batches are Dataset.random's values, as the loop's global seed sets them."""
  try:
    tf.random.set_seed(global_seed)
    values = tf.data.Dataset.random(seed=11).skip(2 * start_step * batch_size)
    expected = list(values.batch(2 * batch_size).take(4).as_numpy_iterator())
    batches = list(input_pipeline._seed_batches(11, batch_size, start_step).take(4))
  finally:
    tf.random.set_seed(None)
  for batch, want in zip(batches, expected, strict=True):
    assert batch.shape == (batch_size, 2) and batch.dtype == tf.int64
    np.testing.assert_array_equal(batch.numpy().reshape(-1), want)


def test_parallel_reads_keep_the_record_order(tiny_data, tmp_path, monkeypatch):
  """Remote files are read in parallel, local ones in sequence: same stream."""
  config = tiny_config(tiny_data, tmp_path)
  assert not input_pipeline._reads_in_parallel(['/data/train-0', 'relative/train-1'])
  assert input_pipeline._reads_in_parallel(['gs://bucket/train-0'])

  def candidates():
    return [batch[0].numpy() for batch in input_pipeline.source_dataset(config).take(3)]
  sequential = candidates()
  monkeypatch.setattr(input_pipeline, '_reads_in_parallel', lambda files: True)
  for serial, parallel in zip(sequential, candidates(), strict=True):
    np.testing.assert_array_equal(serial, parallel)


def test_inception_crops_keep_decoding_each_target_image(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path)
  inception = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                   train_crop='inception'))
  assert not input_pipeline._resized_target_fits(inception, 10)


def test_global_selection_streams_repeat_the_global_candidates(tiny_data, tmp_path):
  """Every local replica gets the same M_S * B_S global candidates, unsharded."""
  config = tiny_config(tiny_data, tmp_path, selection='global')
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  first, second = list(input_pipeline.source_dataset(config, context).take(2))
  alone = next(iter(input_pipeline.source_dataset(config)))
  assert first[0].shape == (5 * 4,)
  for a, b, c in zip(first, second, alone):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_source_stream_is_reproducible_for_a_seed(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path)
  first = [x.numpy() for x in next(iter(input_pipeline.source_dataset(config)))]
  again = [x.numpy() for x in next(iter(input_pipeline.source_dataset(config)))]
  other = [x.numpy() for x in next(iter(input_pipeline.source_dataset(
      dataclasses.replace(config, seed=5))))]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0], other[0])


def test_input_context_shards_source_files_between_pipelines(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path, source_batch_multiplier=1)
  seen = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    dataset = input_pipeline.raw_dataset(config.data.source_train, config.data, 0, context)
    seen.append({bytes(image) for image, _ in dataset.as_numpy_iterator()})
  assert not seen[0] & seen[1]
  assert len(seen[0]) + len(seen[1]) == 160


class L2tlOneFileDigits(tfds.core.GeneratorBasedBuilder):
  """A real local TFDS dataset whose splits are one file each (no download)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 1)),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(range(30)),
            'test': self._generate_examples(range(100, 107))}

  def _generate_examples(self, pixel_values):
    for value in pixel_values:
      yield value, {'image': np.full((8, 8, 1), value, np.uint8), 'label': value % 3}


@pytest.mark.parametrize('split, size', [('train', 30), ('train[5:]', 25), ('train+test', 37)])
def test_input_context_splits_a_one_file_tfds_split_between_pipelines(tmp_path, split, size):
  """TFDS's own file sharding raises for fewer files than pipelines; by example it works."""
  L2tlOneFileDigits(data_dir=str(tmp_path)).download_and_prepare()
  data = DataConfig(tfds_data_dir=str(tmp_path))
  spec = f'tfds:l2tl_one_file_digits/{split}'

  def pixels(context):
    dataset = input_pipeline.raw_dataset(spec, data, 0, context)
    return [int(tf.io.decode_png(image)[0, 0, 0]) for image, _ in dataset.as_numpy_iterator()]

  whole = pixels(None)
  parts = [pixels(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                             num_replicas_in_sync=2)) for i in range(2)]
  assert len(whole) == size
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(whole)
  assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_global_batch_not_divisible_by_replicas_is_an_error(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path, batch_size=3)
  context = tf.distribute.InputContext(1, 0, num_replicas_in_sync=2)
  with pytest.raises(ValueError, match='not divisible by the 2 replicas'):
    input_pipeline.source_dataset(config, context)


def test_carved_reward_set_is_decoded_with_eval_preprocessing(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path)
  subsets = input_pipeline.target_subsets(config)
  def reward_examples():
    return input_pipeline.eval_preprocessed(input_pipeline.reward_records(config, subsets),
                                            config.data).as_numpy_iterator()
  examples = list(reward_examples())
  assert len(examples) == 4 * 5
  again = list(reward_examples())
  np.testing.assert_array_equal(examples[0][0], again[0][0])


def test_source_class_names_come_from_the_class_names_file(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path)
  assert input_pipeline.source_class_names(config.data)[:2] == ['class_0', 'class_1']
  no_names = dataclasses.replace(config.data, source_train=config.data.target_train,
                                 source_num_classes=4)
  assert input_pipeline.source_class_names(no_names) == ['0', '1', '2', '3']


def test_class_names_beside_a_remote_source_are_read(tmp_path):
  """os.path.exists missed class_names.txt beside gs:// shards: rankings printed ids."""
  records.write_class_names('ram://names_test/source', ['alpha', 'beta', '\u2028'])
  data = DataConfig(source_train='ram://names_test/source/train-*', source_num_classes=3)
  assert input_pipeline.source_class_names(data) == ['alpha', 'beta', '\u2028']


def test_tfds_specs_stream_through_the_same_pipeline(tmp_path):
  data = DataConfig(source_train='tfds:dtd/train', target_train='tfds:dtd/train',
                    target_val='tfds:dtd/validation', source_num_classes=47,
                    target_num_classes=47, image_size=32, num_channels=3)
  config = Config(model_dir=str(tmp_path), batch_size=2, source_batch_multiplier=4, data=data,
                  source_decode='pipeline')
  with tfds.testing.mock_data(num_examples=12):
    images, labels = next(iter(input_pipeline.source_dataset(config)))
    assert images.shape == (8, 32, 32, 3)
    encoded, _, seeds = next(iter(input_pipeline.source_dataset(
        dataclasses.replace(config, source_decode='after_select'))))
    np.testing.assert_array_equal(
        input_pipeline.decode_and_augment(encoded, seeds, data), images)
    assert int(tf.reduce_max(labels)) < 47
    assert input_pipeline.source_class_names(data)[0] == 'banded'
    reward_images, _ = next(iter(input_pipeline.reward_dataset(
        config, input_pipeline.TargetSubsets(12, np.arange(12), np.arange(0)))))
    assert reward_images.shape == (8, 32, 32, 3)


@pytest.mark.parametrize('crop, flip', [('pad_crop', True), ('none', True)])
def test_a_batch_is_augmented_as_its_images_are_one_at_a_time(crop, flip):
  """The batched draws (`stateless_draws`) give each image its per-image augmentation."""
  data = DataConfig(image_size=12, num_channels=3, train_crop=crop, random_flip=flip)
  rng = np.random.default_rng(1)
  images = tf.constant(rng.random((40, 12, 12, 3)), tf.float32)
  seeds = tf.constant(rng.integers(-2**63, 2**63 - 1, (40, 2), dtype=np.int64, endpoint=True))
  batched = input_pipeline.augment_batch(images, seeds, data)
  one_at_a_time = [input_pipeline.augment_batch(images[i:i + 1], seeds[i:i + 1], data)[0]
                   for i in range(40)]
  np.testing.assert_array_equal(batched, np.stack(one_at_a_time))


@pytest.mark.parametrize('pipelines', [1, 2])
@pytest.mark.parametrize('carved', [True, False])
def test_a_reward_set_too_large_for_memory_streams_the_same_batches(
    tiny_data, tmp_path, monkeypatch, pipelines, carved):
  """Over REWARD_IN_MEMORY_BYTES the encoded bytes are cached and each image is
  decoded when drawn: the reward batches and the validation pass are unchanged."""
  config = tiny_config(tiny_data, tmp_path)
  if not carved:  # a separate validation file: the tiny target test set stands in
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, target_val=config.data.target_test, val_examples_per_class=0))
  subsets = input_pipeline.target_subsets(config)
  context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                       input_pipeline_id=pipelines - 1,
                                       num_replicas_in_sync=pipelines)

  def streams():
    return (list(input_pipeline.reward_dataset(config, subsets, context, start_step=2).take(4)),
            list(input_pipeline.validation_batches(config, subsets)))
  assert input_pipeline.decoded_reward_fits(config, subsets)
  in_memory = streams()
  monkeypatch.setattr(input_pipeline, 'REWARD_IN_MEMORY_BYTES', 0)
  assert not input_pipeline.decoded_reward_fits(config, subsets)
  for fitted, streamed in zip(in_memory, streams(), strict=True):
    for (images, labels), (decoded, decoded_labels) in zip(fitted, streamed, strict=True):
      np.testing.assert_array_equal(images, decoded)
      np.testing.assert_array_equal(labels, decoded_labels)


def test_a_target_larger_than_the_shuffle_buffer_streams_in_a_window(tmp_path):
  """A full-size target (Food-101, CheXpert) is not cached and shuffled whole in memory:
  like the source, it is shuffled in a --shuffle_buffer window of the file order."""
  labels = np.arange(64)  # one example per class: a label is its position
  pattern = records.write_image_records(str(tmp_path / 'train'),
                                        np.zeros([64, IMAGE_SIZE, IMAGE_SIZE], np.uint8), labels)
  data = DataConfig(target_train=pattern, target_num_classes=64, image_size=IMAGE_SIZE,
                    num_channels=1, train_crop='inception', random_flip=False, shuffle_buffer=8)
  config = Config(mode=Mode.FINETUNE, model_dir=str(tmp_path / 'run'), batch_size=4, data=data)
  subsets = input_pipeline.target_subsets(config)
  stream = input_pipeline.target_train_dataset(config, subsets)
  batches = [batch_labels.numpy() for _, batch_labels in stream.take(48)]
  assert batches[0].max() < 8 + 4  # drawn from the first window, not from all 64
  assert set(np.concatenate(batches)) == set(labels)  # every example, epoch after epoch
