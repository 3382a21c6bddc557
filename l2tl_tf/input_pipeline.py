"""tf.data pipelines for the three L2TL streams and for evaluation.

Every dataset is named by one spec string:
  * a TFRecord file pattern with ImageNet-style features (see `records.py`),
  * `tfds:NAME/SPLIT`, e.g. `tfds:oxford_iiit_pet/train` (read with
    `decoders={'image': SkipDecoding()}` so both kinds yield encoded bytes).

All streams yield `(images, labels)`: float32 images in [0, 1] of shape
[batch, image_size, image_size, num_channels] and int32 labels. Randomness
(shuffles, crops, flips, subsets) derives from the run's seed through stateless
ops, so two runs with one seed see the same examples in the same order.
"""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from l2tl_tf import records, stateless_draws
from l2tl_tf.config import Config, DataConfig

AUTOTUNE = tf.data.AUTOTUNE
TFDS_PREFIX = 'tfds:'
# Inception-style evaluation keeps the central 87.5% of the image.
INCEPTION_EVAL_CROP = 0.875
# Below this size, training crops are pad-and-crop rather than Inception's.
INCEPTION_MIN_SIZE = 96


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A parsed dataset spec string."""
  spec: str
  tfds_name: str = ''
  tfds_split: str = ''

  @property
  def is_tfds(self) -> bool:
    return bool(self.tfds_name)


def parse_spec(spec: str) -> DatasetSpec:
  """Parses `tfds:NAME/SPLIT` or a file pattern.

  Raises:
    ValueError: for an empty spec or a tfds spec without a split.
  """
  if not spec:
    raise ValueError('Empty dataset spec: give a TFRecord file pattern or tfds:NAME/SPLIT.')
  if not spec.startswith(TFDS_PREFIX):
    return DatasetSpec(spec=spec)
  body = spec[len(TFDS_PREFIX):]
  name, _, split = body.rpartition('/')
  if not name or not split:
    raise ValueError(f'Dataset spec {spec!r} must look like tfds:NAME/SPLIT, '
                     'e.g. tfds:oxford_iiit_pet/train.')
  return DatasetSpec(spec=spec, tfds_name=name, tfds_split=split)


def list_files(pattern: str) -> list[str]:
  """Sorted files matching `pattern`, so file order never depends on the OS."""
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f'File pattern {pattern!r} matches no file. Check the path, or '
                     'use tfds:NAME/SPLIT for a TFDS dataset.')
  return files


# Every gzip file starts with these bytes (RFC 1952: magic, then method
# deflate). A plain TFRecord starts with its first record's length instead, so
# it could only look the same if that record were 559,903 bytes (mod 2**24).
_GZIP_MAGIC = b'\x1f\x8b\x08'


def tfrecord_compression_type(files: list[str]) -> str:
  """'GZIP' when the TFRecord files are gzip-compressed (TFX ExampleGen writes
  them so), '' when not: read from the files' first bytes, not their names.

  Raises:
    ValueError: when some files are compressed and others are not (empty
      files count as either).
  """
  kinds = {}
  for path in files:
    with tf.io.gfile.GFile(path, 'rb') as f:
      head = f.read(len(_GZIP_MAGIC))
    if head:
      kinds.setdefault('GZIP' if head == _GZIP_MAGIC else '', path)
  if len(kinds) > 1:
    raise ValueError(f'{kinds["GZIP"]} is GZIP-compressed but {kinds[""]} is not: one '
                     'dataset spec must match TFRecord files of one kind.')
  return next(iter(kinds), '')


def raw_dataset(spec: str, data: DataConfig, label_offset: int,
                input_context: Optional[tf.distribute.InputContext] = None,
                shuffle_files_seed: Optional[int] = None,
                num_classes: int = 0, multi_label: bool = False) -> tf.data.Dataset:
  """Examples as (encoded image bytes, int32 label), labels made 0-based.

  Args:
    spec: dataset spec string.
    data: data settings (for the TFDS data_dir).
    label_offset: subtracted from stored labels.
    input_context: shard for this input pipeline when given.
    shuffle_files_seed: shuffle file order with this seed; None keeps a
      deterministic order (used for label scans and evaluation).
    num_classes: when > 0, a label outside [0, num_classes) stops the stream
      with an error naming `spec`. The source stream needs it: its shards are
      only sampled before training (see preflight.py), and on accelerators an
      out-of-range label gives NaN or garbage rather than an error.
    multi_label: each record holds a list of positive class ids; they become
      a float32 multi-hot vector of length `num_classes` (required then).

  Returns:
    A tf.data.Dataset of (tf.string, tf.int32) scalars, or (tf.string,
    float32 [num_classes]) with `multi_label`.
  """
  parsed = parse_spec(spec)
  if parsed.is_tfds:
    dataset = _tfds_dataset(parsed, data, input_context, shuffle_files_seed)
  else:
    dataset = _tfrecord_dataset(parsed.spec, input_context, shuffle_files_seed, multi_label)
  if multi_label:
    return dataset.map(
        lambda image, ids: (image, _multi_hot(ids, spec, label_offset, num_classes)),
        num_parallel_calls=AUTOTUNE)
  return dataset.map(
      lambda image, label: (image, _zero_based(label, spec, label_offset, num_classes)),
      num_parallel_calls=AUTOTUNE)


def target_records(spec: str, data: DataConfig) -> tf.data.Dataset:
  """A target dataset as (encoded image, label), in its deterministic order.

  Labels are int32 class ids, or float32 multi-hot vectors of length C_T for
  a multi-label target (--target_multi_label).
  """
  if not data.target_multi_label:
    return raw_dataset(spec, data, data.target_label_offset)
  return raw_dataset(spec, data, data.target_label_offset,
                     num_classes=data.target_num_classes, multi_label=True)


def _multi_hot(ids, spec, label_offset, num_classes):
  """A record's positive class ids -> float32 multi-hot [num_classes], ids checked.

  An id outside the class range would vanish silently in the one-hot, so it
  stops the stream instead; no id at all is a valid all-negative image.
  """
  ids = _zero_based(tf.reshape(ids, [-1]), spec, label_offset, num_classes)
  return tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_classes), axis=0), 1.0)


def _zero_based(label, spec, label_offset, num_classes):
  """Labels (a scalar or a batch) minus the offset, checked against num_classes."""
  label = tf.cast(label - label_offset, tf.int32)
  if not num_classes:
    return label
  in_range = tf.debugging.Assert(tf.reduce_all((label >= 0) & (label < num_classes)), [
      f'A record of {spec} has a label outside [0, {num_classes}) after subtracting the '
      f'label offset {label_offset}: fix the class count or the label offset flag '
      '(1-based ImageNet labels need offset 1). The label:', label])
  with tf.control_dependencies([in_range]):
    return tf.identity(label)


def _tfrecord_dataset(pattern, input_context, shuffle_files_seed, multi_label=False):
  return _serialized_records(pattern, input_context, shuffle_files_seed).map(
      lambda serialized: records.parse_example(serialized, multi_label),
      num_parallel_calls=AUTOTUNE)


def _serialized_records(pattern, input_context, shuffle_files_seed):
  """Serialized tf.Example records of a TFRecord pattern, sharded for the pipeline."""
  files = list_files(pattern)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  shard_examples = False
  if input_context and input_context.num_input_pipelines > 1:
    if len(files) >= input_context.num_input_pipelines:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    else:
      shard_examples = True
  if shuffle_files_seed is not None:
    dataset = dataset.shuffle(len(files), seed=shuffle_files_seed)
  compression = tfrecord_compression_type(files)
  parallel = dict(num_parallel_calls=AUTOTUNE, deterministic=True)
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
      cycle_length=min(len(files), 16), **(parallel if _reads_in_parallel(files) else {}))
  if shard_examples:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  return dataset


def _reads_in_parallel(files: list[str]) -> bool:
  """Parallel reads hide remote storage's latency (gs://...).

  On local disk they only add threads that compete with the step for the
  host's cores (half the source stream's CPU on the small-CNN benchmark).
  The record order is the same either way: the interleave is deterministic.
  """
  return any('://' in path for path in files)


def _tfds_dataset(parsed, data, input_context, shuffle_files_seed):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_files_seed)
  split = _tfds_pipeline_split(parsed.tfds_split, input_context)
  dataset = tfds.load(parsed.tfds_name, split=split,
                      data_dir=data.tfds_data_dir, download=False,
                      shuffle_files=shuffle_files_seed is not None,
                      decoders={'image': tfds.decode.SkipDecoding()},
                      read_config=read_config)
  return dataset.map(lambda ex: (ex['image'], ex['label']), num_parallel_calls=AUTOTUNE)


def _tfds_pipeline_split(split: str, input_context):
  """This input pipeline's part of a TFDS split.

  TFDS's `ReadConfig(input_context=...)` shards by file and raises when a split
  has fewer files than there are input pipelines (a small target split on a
  multi-host TPU pod). `tfds.even_splits` divides by example instead: the parts
  are disjoint, cover the split, and work for any file count, as the TFRecord
  path's fallback does.
  """
  if not input_context or input_context.num_input_pipelines <= 1:
    return split
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.even_splits(split, n=input_context.num_input_pipelines)[
      input_context.input_pipeline_id]


def tfds_label_names(spec: str, data: DataConfig) -> Optional[list[str]]:
  """Class names from TFDS metadata, or None when not a TFDS spec or unknown."""
  parsed = parse_spec(spec)
  if not parsed.is_tfds:
    return None
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(parsed.tfds_name, data_dir=data.tfds_data_dir)
    return list(builder.info.features['label'].names)
  except Exception:  # pylint: disable=broad-except
    return None


def source_class_names(data: DataConfig) -> list[str]:
  """Names for source classes: explicit file, class_names.txt, TFDS, or ids."""
  path = data.source_class_names
  if not path and data.source_train and not data.source_train.startswith(TFDS_PREFIX):
    candidate = os.path.join(os.path.dirname(data.source_train), records.CLASS_NAMES_FILE)
    path = candidate if tf.io.gfile.exists(candidate) else ''
  names = records.read_class_names(path) if path else tfds_label_names(data.source_train, data)
  if names is None:
    return [str(i) for i in range(data.source_num_classes)]
  if len(names) < data.source_num_classes:
    raise ValueError(f'{path or data.source_train} names {len(names)} classes but '
                     f'--source_num_classes={data.source_num_classes}.')
  return names[:data.source_num_classes]


# ---------------------------------------------------------------- decoding

def decode_image(encoded: tf.Tensor, num_channels: int) -> tf.Tensor:
  """Decodes PNG/JPEG bytes to uint8 [H, W, num_channels], converting colour."""
  image = tf.io.decode_image(encoded, channels=num_channels, expand_animations=False)
  image.set_shape([None, None, num_channels])
  return image


def resolved_crop(data: DataConfig) -> str:
  if data.train_crop != 'auto':
    return data.train_crop
  return 'inception' if data.image_size >= INCEPTION_MIN_SIZE else 'pad_crop'


def _pad(size: int) -> int:
  """Pad-and-crop's margin: an eighth of the side, as in CIFAR-style training."""
  return max(size // 8, 1)


def _draws(seeds: tf.Tensor, data: DataConfig):
  """Each example's crop seed, crop offset and flip bit, from its stateless seed.

  The single definition of an example's randomness, so augmenting one image
  at a time (`preprocess_train`) and a batch at once (`augment_batch`) give
  bit-identical images. The offset and flip follow the recipe of
  `tf.image.stateless_random_crop` / `stateless_random_flip_left_right`, so
  runs from before the batched path reproduce exactly.

  Args:
    seeds: int64 [B, 2].
    data: data settings.

  Returns:
    (crop_seeds int64 [B, 2], offsets int32 [B, 2], flips bool [B]).
  """
  margin = 2 * _pad(data.image_size) + 1
  if seeds.shape[0] == 1:  # one image in a tf.data map: TF's own ops are fewer
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds[0], 2))
    offset = tf.random.stateless_uniform([2], seed=crop_seed, dtype=tf.int32,
                                         maxval=tf.int32.max) % margin
    flip = tf.random.stateless_uniform([], seed=flip_seed, minval=0, maxval=1.0) < 0.5
    return crop_seed[None], offset[None], flip[None]
  crop_seeds, flip_seeds = stateless_draws.split_in_two(seeds)
  crop_block, flip_block = stateless_draws.first_blocks(crop_seeds, flip_seeds)
  return (crop_seeds, stateless_draws.int32_values(crop_block, 2) % margin,
          stateless_draws.below_half(flip_block))


def resize_for_training(image: tf.Tensor, data: DataConfig) -> tf.Tensor:
  """The deterministic start of pad-and-crop and no-crop augmentation.

  uint8 [H, W, C] -> float32 [image_size, image_size, C]. What comes after it
  (`augment_batch`) is all of the randomness, so its output can be cached.
  """
  image = tf.image.convert_image_dtype(image, tf.float32)
  return tf.image.resize(image, [data.image_size, data.image_size])


def augment_batch(images: tf.Tensor, seeds: tf.Tensor, data: DataConfig) -> tf.Tensor:
  """Random pad-and-crop (unless --train_crop=none) and flip of resized images.

  Batched: a handful of ops per batch rather than per image, which matters
  on a small host where the input pipeline shares cores with the step.

  Args:
    images: float32 [B, image_size, image_size, C] from `resize_for_training`.
    seeds: int64 [B, 2] stateless seeds, one per example.
    data: data settings; `resolved_crop(data)` is 'pad_crop' or 'none'.

  Returns:
    float32 [B, image_size, image_size, C] in [0, 1].
  """
  size = data.image_size
  _, offsets, flips = _draws(seeds, data)
  if resolved_crop(data) == 'pad_crop':
    pad = _pad(size)
    images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    images = tf.gather(images, offsets[:, :1] + tf.range(size), axis=1, batch_dims=1)
    images = tf.gather(images, offsets[:, 1:] + tf.range(size), axis=2, batch_dims=1)
  if data.random_flip:
    images = tf.where(flips[:, None, None, None], tf.reverse(images, [2]), images)
  return tf.clip_by_value(images, 0.0, 1.0)


def preprocess_train(image: tf.Tensor, seed: tf.Tensor, data: DataConfig) -> tf.Tensor:
  """Random crop (Inception-style or pad-and-crop) and optional flip of one image.

  Args:
    image: uint8 [H, W, C].
    seed: int64 [2] stateless seed for this example.
    data: data settings.

  Returns:
    float32 [image_size, image_size, C] in [0, 1].
  """
  if resolved_crop(data) != 'inception':
    return augment_batch(resize_for_training(image, data)[None], seed[None], data)[0]
  crop_seed, _, flip = _draws(seed[None], data)
  image = tf.image.convert_image_dtype(image, tf.float32)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=crop_seed[0], min_object_covered=0.1, aspect_ratio_range=(0.75, 1.33),
      area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.image.resize(tf.slice(image, begin, crop_size), [data.image_size] * 2)
  if data.random_flip:
    image = tf.cond(flip[0], lambda: tf.reverse(image, [1]), lambda: image)
  return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_eval(image: tf.Tensor, data: DataConfig) -> tf.Tensor:
  """Single central crop (Inception's 87.5% for large images), then resize."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  if resolved_crop(data) == 'inception':
    image = tf.image.central_crop(image, INCEPTION_EVAL_CROP)
  image = tf.image.resize(image, [data.image_size, data.image_size])
  return tf.clip_by_value(image, 0.0, 1.0)


EVAL_CROPS = (1, 10)


def preprocess_ten_crop(image: tf.Tensor, data: DataConfig) -> tf.Tensor:
  """Ten crops [10, size, size, C]: corners and centre of the image resized to
  size / 0.875, and their mirror images (CheXpert's evaluation, the paper's
  Table 7; 224 px crops of a 256 px image)."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  size = data.image_size
  full = int(round(size / INCEPTION_EVAL_CROP))
  image = tf.image.resize(image, [full, full])
  far, middle = full - size, (full - size) // 2
  crops = [image[top:top + size, left:left + size]
           for top, left in ((0, 0), (0, far), (far, 0), (far, far), (middle, middle))]
  crops += [tf.image.flip_left_right(crop) for crop in crops]
  return tf.clip_by_value(tf.stack(crops), 0.0, 1.0)


# ---------------------------------------------------------------- subsets

@dataclasses.dataclass(frozen=True)
class TargetSubsets:
  """Which target_train examples (by position) train and which give rewards.

  Computed once on the host from a label scan, so the subsets are a pure
  function of (dataset, seed, k, validation size) whatever the strategy.
  """
  num_examples: int
  train_indices: np.ndarray
  val_indices: np.ndarray


def scan_labels(spec: str, data: DataConfig, label_offset: int) -> np.ndarray:
  """All labels of a dataset in its deterministic order (images not decoded)."""
  labels = raw_dataset(spec, data, label_offset).map(lambda _, label: label)
  return np.fromiter(labels.batch(4096).unbatch().as_numpy_iterator(), dtype=np.int64)


def choose_target_subsets(labels: np.ndarray, num_classes: int, examples_per_class: int,
                          val_examples_per_class: int, seed: int,
                          dataset: str = '--target_train') -> TargetSubsets:
  """Seeded per-class split: `val` examples for rewards, then `k` for training.

  Args:
    labels: labels of target_train in dataset order.
    num_classes: C_T; labels outside [0, C_T) are an error.
    examples_per_class: k (0 keeps every example not carved out).
    val_examples_per_class: per-class carve-out for the reward set (0: none).
    seed: the run's seed.
    dataset: names the labels' dataset in error messages.

  Raises:
    ValueError: on an out-of-range label or a class too small for the request.
  """
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f'{dataset} has label {int(bad[0])} outside [0, {num_classes}): '
                     'check --target_num_classes and --target_label_offset.')
  rng = np.random.default_rng([seed, 20190625])
  train, val = [], []
  for cls in range(num_classes):
    members = rng.permutation(np.flatnonzero(labels == cls))
    needed = val_examples_per_class + max(examples_per_class, 0)
    if len(members) < max(needed, 1):
      raise ValueError(_class_too_small(cls, len(members), dataset, num_classes,
                                        examples_per_class, val_examples_per_class))
    val.append(members[:val_examples_per_class])
    rest = members[val_examples_per_class:]
    train.append(rest[:examples_per_class] if examples_per_class > 0 else rest)
  return TargetSubsets(num_examples=len(labels),
                       train_indices=np.sort(np.concatenate(train)),
                       val_indices=np.sort(np.concatenate(val)))


def _class_too_small(cls: int, size: int, dataset: str, num_classes: int,
                     examples_per_class: int, val_examples_per_class: int) -> str:
  if not size:
    return (f'Target class {cls} has no examples in {dataset} (so none to train on or to '
            f'carve validation examples from): every class below --target_num_classes='
            f'{num_classes} needs some. Add examples of class {cls} or lower '
            '--target_num_classes.')
  return (f'Target class {cls} has {size} examples in {dataset} but '
          f'--val_examples_per_class={val_examples_per_class} + '
          f'--examples_per_class={examples_per_class} were asked for: lower them to '
          f'{size} together at most, or add examples of class {cls}.')


def scan_target_labels(spec: str, data: DataConfig) -> np.ndarray:
  """All labels of a target dataset in order: [N] ids, or [N, C_T] multi-hot."""
  labels = target_records(spec, data).map(lambda _, label: label)
  batches = list(labels.batch(4096).as_numpy_iterator())
  if not batches:
    spec_ = labels.element_spec
    return np.zeros([0, *spec_.shape.as_list()], spec_.dtype.as_numpy_dtype)
  return np.concatenate(batches)


def target_subsets(config: Config) -> TargetSubsets:
  """The run's train and reward positions in target_train.

  A multi-label target trains on every example: `config.validate` refuses
  per-class subsets and carve-outs for it.
  """
  data = config.data
  labels = scan_target_labels(data.target_train, data)
  if data.target_multi_label:
    missing = np.flatnonzero(labels.sum(axis=0) == 0)
    if missing.size:
      raise ValueError(f'--target_train={data.target_train} has no positive of target class '
                       f'{missing[0]} (classes without any: {missing[:10].tolist()}, of '
                       f'--target_num_classes={data.target_num_classes}): every class needs '
                       'positives to be learned. Add some, or drop the class.')
    return TargetSubsets(num_examples=len(labels), train_indices=np.arange(len(labels)),
                         val_indices=np.zeros([0], np.int64))
  val_per_class = data.val_examples_per_class if not data.target_val else 0
  return choose_target_subsets(labels, data.target_num_classes, data.examples_per_class,
                               val_per_class, config.seed,
                               dataset=f'--target_train={data.target_train}')


def _take_positions(dataset: tf.data.Dataset, positions: np.ndarray,
                    num_examples: int) -> tf.data.Dataset:
  mask = np.zeros([num_examples], dtype=bool)
  mask[positions] = True
  mask = tf.constant(mask)
  return dataset.enumerate().filter(lambda i, _: mask[i]).map(lambda _, example: example)


# ---------------------------------------------------------------- streams

# The flags that set each global batch, for the fix in error messages.
_BATCH_FLAGS = {
    'source': '--batch_size, --source_batch_ratio or --source_batch_multiplier',
    'kept source': '--batch_size or --source_batch_ratio',
    'target': '--batch_size',
    'reward': '--batch_size or --reward_batch_ratio',
}


def _per_replica_batch(global_batch: int, input_context, what: str) -> int:
  replicas = input_context.num_replicas_in_sync if input_context else 1
  if global_batch % replicas:
    raise ValueError(f'The global {what} batch of {global_batch} is not divisible by '
                     f'the {replicas} replicas: change {_BATCH_FLAGS[what]} so that it is.')
  return global_batch // replicas


def check_batches(config: Config, num_replicas: int) -> None:
  """Raises unless every global batch of this run splits evenly over the replicas.

  The streams check their own batch when built, which is after the run
  directory is written; this makes the same checks before. B_S is checked even
  when only M_S * B_S candidates are read: the step keeps B_S / replicas of
  them on each replica.
  """
  context = tf.distribute.InputContext(num_replicas_in_sync=num_replicas)
  batches = {'kept source': config.source_batch_size if config.mode.uses_source else 0,
             'target': config.target_batch_size if config.mode.uses_target else 0,
             'reward': config.reward_batch_size if config.learns_policy else 0}
  for what, global_batch in batches.items():
    _per_replica_batch(global_batch, context, what)


def _local_replicas(input_context) -> int:
  """How many replicas one input pipeline feeds: it yields that many batches a step."""
  if not input_context:
    return 1
  return input_context.num_replicas_in_sync // input_context.num_input_pipelines


def _batches_before(start_step: int, input_context) -> int:
  """Per-replica batches a pipeline has yielded before `start_step`.

  A resumed stream skips these: one pipeline feeding R/P replicas (all of
  them under MirroredStrategy or TPUStrategy) yields R/P batches per step.
  """
  return start_step * _local_replicas(input_context)


def _pipeline_seed(seed: int, stream: int, input_context) -> int:
  pipeline = input_context.input_pipeline_id if input_context else 0
  return int(np.random.default_rng([seed, stream, pipeline]).integers(2**31 - 1))


def _with_seeds(dataset, seed, batch_size, start_batch):
  """Pairs each example with its stateless augmentation seed, skipping `start_batch` batches.

  The stream before decoding is a pure function of the seed, so resuming
  skips the batches already yielded (`_batches_before`; read, never decoded)
  and continues exactly where an uninterrupted run would be.
  """
  seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
  return tf.data.Dataset.zip((dataset, seeds)).skip(start_batch * batch_size)


# Seed batches computed per map call: one call's fixed op overhead is larger
# than the Philox arithmetic of a batch, so the stream makes many at once.
_SEED_BATCHES_PER_CALL = 32


def _seed_batches(seed, batch_size, start_batch):
  """`_with_seeds`'s seeds, a batch of int64 [batch_size, 2] at a time.

  The values of `tf.data.Dataset.random(seed)` cut 2 * batch_size at a time
  (pairing a batch of examples with one of these equals pairing each example
  with its own seed), computed `_SEED_BATCHES_PER_CALL` batches at a time by
  `stateless_draws.random_dataset_values` rather than drawn one element at a
  time: the same values (tested) for a fraction of the CPU.
  """
  seed_pair = tf.compat.v1.get_seed(seed)  # as Dataset.random(seed) would take it, here
  per_call, per_batch = _SEED_BATCHES_PER_CALL, 2 * batch_size

  def batches(call):
    first = (start_batch + call * per_call) * per_batch
    values = stateless_draws.random_dataset_values(seed_pair, first, per_call * per_batch)
    return tf.reshape(values, [per_call, batch_size, 2])
  return tf.data.Dataset.counter().map(batches).unbatch()


def _augment_and_batch(dataset, data, seed, batch_size, start_batch):
  """Decodes, augments with per-example stateless seeds, batches."""
  dataset = _with_seeds(dataset, seed, batch_size, start_batch).map(
      lambda example, s: (preprocess_train(decode_image(example[0], data.num_channels), s, data),
                          example[1]),
      num_parallel_calls=AUTOTUNE)
  return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def decode_and_augment(encoded: tf.Tensor, seeds: tf.Tensor, data: DataConfig) -> tf.Tensor:
  """Training images for a batch of encoded candidates: the pipeline's own map.

  Used by the step when source candidates arrive encoded (Config.source_decode
  = 'after_select'): the same decode and the same per-example seeds as
  `_augment_and_batch`, so the kept images are identical to decoding in tf.data.

  Args:
    encoded: string [B] encoded images.
    seeds: int64 [B, 2] stateless seeds.
    data: data settings.

  Returns:
    float32 [B, image_size, image_size, num_channels].
  """
  size, channels = data.image_size, data.num_channels
  spec = tf.TensorSpec([size, size, channels], tf.float32)
  if resolved_crop(data) == 'inception':
    return tf.map_fn(
        lambda args: preprocess_train(decode_image(args[0], channels), args[1], data),
        (encoded, seeds), parallel_iterations=16, fn_output_signature=spec)
  resized = tf.map_fn(lambda e: resize_for_training(decode_image(e, channels), data),
                      encoded, parallel_iterations=16, fn_output_signature=spec)
  return augment_batch(resized, seeds, data)


def source_dataset(config: Config, input_context=None, start_step: int = 0) -> tf.data.Dataset:
  """The source stream: M_S * B_S candidates per step (B_S in pretrain).

  Elements are (images, labels), or (encoded, labels, seeds) when the step
  decodes after selecting (Config.decodes_after_select). With
  --selection=global every replica reads the same global candidates (the
  pipeline repeats each batch once per local replica), so each can compute
  the global top B_S. `start_step` > 0 resumes the stream as it stood before
  that step.
  """
  data = config.data
  global_selection = config.decodes_after_select and config.selection == 'global'
  if global_selection:
    batch, context, seed = config.source_candidate_batch_size, None, _pipeline_seed(
        config.seed, 1, None)
  else:
    seed = _pipeline_seed(config.seed, 1, input_context)
    batch = _per_replica_batch(config.source_candidate_batch_size, input_context, 'source')
    context = input_context
  # Global selection yields one global batch per step (repeated below).
  start = start_step if global_selection else _batches_before(start_step, input_context)
  if config.decodes_after_select and not parse_spec(data.source_train).is_tfds:
    dataset = _encoded_candidates(config, context, seed, batch, start)
  else:
    dataset = raw_dataset(data.source_train, data, data.source_label_offset,
                          context, shuffle_files_seed=seed,
                          num_classes=data.source_num_classes)
    dataset = dataset.repeat().shuffle(data.shuffle_buffer, seed=seed)
    if not config.decodes_after_select:
      return _augment_and_batch(dataset, data, seed, batch, start)
    dataset = _with_seeds(dataset, seed, batch, start).map(
        lambda example, s: (example[0], example[1], s))
    dataset = dataset.batch(batch, drop_remainder=True)
  if global_selection and input_context:
    local_replicas = _local_replicas(input_context)
    _per_replica_batch(config.source_batch_size, input_context, 'kept source')
    dataset = dataset.flat_map(
        lambda *batch_: tf.data.Dataset.from_tensors(batch_).repeat(local_replicas))
  return dataset.prefetch(AUTOTUNE)


def _encoded_candidates(config: Config, input_context, seed: int, batch: int,
                        start_batch: int) -> tf.data.Dataset:
  """Batches of (encoded, labels, seeds) from TFRecords, parsed a batch at a time.

  Nothing per record but the shuffle: records stay serialized through it,
  each batch is parsed by one `tf.io.parse_example` and gets its seeds from
  `_seed_batches`. The shuffle's order depends only on its seed and the
  record count, so the stream equals parsing each record first (tested); it
  costs a fraction of the CPU, which on a small host the step competes for.
  """
  data = config.data
  dataset = _serialized_records(data.source_train, input_context, seed)
  dataset = dataset.repeat().shuffle(data.shuffle_buffer, seed=seed).skip(start_batch * batch)
  dataset = tf.data.Dataset.zip(dataset.batch(batch, drop_remainder=True),
                                _seed_batches(seed, batch, start_batch))

  def parse(serialized, seeds):
    parsed = tf.io.parse_example(serialized, records.FEATURE_SPEC)
    labels = _zero_based(parsed[records.LABEL_KEY], data.source_train,
                         data.source_label_offset, data.source_num_classes)
    return parsed[records.IMAGE_KEY], labels, seeds
  return dataset.map(parse, num_parallel_calls=AUTOTUNE)


def target_train_dataset(config: Config, subsets: TargetSubsets,
                         input_context=None, start_step: int = 0) -> tf.data.Dataset:
  """The target-train stream: B_T examples of the k-shot subset per step.

  Every input pipeline shards the subset by position. When its resized
  images fit in `TARGET_IN_MEMORY_BYTES` and the crop is not Inception's,
  they are decoded once and each batch is gathered and augmented in a few ops
  (`_resized_target_batches`); otherwise the encoded bytes are cached and
  each image is decoded and augmented on its own. Both give the same batches.
  A subset larger than --shuffle_buffer (a full-size target such as
  Food-101's 75,750 or CheXpert's 223,000 images, which no k-shot subset is)
  streams from its files instead, shuffled in a --shuffle_buffer window like
  the source, rather than being cached and shuffled whole in host memory.
  """
  data = config.data
  seed = _pipeline_seed(config.seed, 2, input_context)
  batch = _per_replica_batch(config.target_batch_size, input_context, 'target')
  dataset = _take_positions(target_records(data.target_train, data),
                            subsets.train_indices, subsets.num_examples)
  pipelines, pipeline_id = 1, 0
  if input_context and input_context.num_input_pipelines > 1:
    pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    dataset = dataset.shard(pipelines, pipeline_id)
  buffer = max(len(subsets.train_indices), 1)
  shard_size = len(range(pipeline_id, len(subsets.train_indices), pipelines))
  start = _batches_before(start_step, input_context)
  if shard_size and _resized_target_fits(config, len(subsets.train_indices)):
    return _resized_target_batches(dataset, shard_size, buffer, data, seed, batch, start)
  if buffer > data.shuffle_buffer:
    dataset = dataset.repeat().shuffle(data.shuffle_buffer, seed=seed)
  else:
    dataset = dataset.cache().repeat().shuffle(buffer, seed=seed)
  return _augment_and_batch(dataset, data, seed, batch, start)


# The most memory the target-train subset's resized float32 images may take
# before its stream falls back to decoding each image every time it is drawn.
TARGET_IN_MEMORY_BYTES = 1 << 30


def _resized_target_fits(config: Config, num_examples: int) -> bool:
  data = config.data
  size = num_examples * data.image_size**2 * data.num_channels * 4
  return resolved_crop(data) != 'inception' and size <= TARGET_IN_MEMORY_BYTES


def _resized_target_batches(dataset, num_examples, buffer, data, seed, batch, start_batch):
  """The target stream from one in-memory tensor of resized images.

  A shuffle's order depends only on its seed, buffer and element count, so
  shuffling positions 0..n-1 draws the same examples as shuffling the
  examples themselves, and `_seed_batches` gives the seeds `_with_seeds`
  would: the batches equal `_augment_and_batch`'s (tested) for a fraction of
  its per-step CPU.
  """
  table = dataset.map(lambda image, label: (
      resize_for_training(decode_image(image, data.num_channels), data), label))
  table = table.batch(num_examples).cache().repeat()
  positions = tf.data.Dataset.range(num_examples).repeat().shuffle(buffer, seed=seed)
  positions = positions.skip(start_batch * batch).batch(batch, drop_remainder=True)

  def gather(examples, chosen, seeds):
    images, labels = examples
    return augment_batch(tf.gather(images, chosen), seeds, data), tf.gather(labels, chosen)
  dataset = tf.data.Dataset.zip(table, positions, _seed_batches(seed, batch, start_batch))
  dataset = dataset.map(gather, num_parallel_calls=AUTOTUNE)
  return dataset.prefetch(AUTOTUNE)


def reward_records(config: Config, subsets: TargetSubsets) -> tf.data.Dataset:
  """The target-validation examples (D'_T) as (encoded image, label), unbatched."""
  data = config.data
  if data.target_val:
    return target_records(data.target_val, data)
  return _take_positions(target_records(data.target_train, data),
                         subsets.val_indices, subsets.num_examples)


# The most memory the reward set's decoded float32 images may take before the
# reward stream and the validation pass keep the encoded bytes instead and
# decode each image when it is drawn. The paper's Food-101 reward set (7,575
# images at 299 px) would take 8.1 GB decoded.
REWARD_IN_MEMORY_BYTES = 2 << 30


def decoded_reward_fits(config: Config, subsets: TargetSubsets) -> bool:
  """Whether the reward set's decoded images fit in REWARD_IN_MEMORY_BYTES."""
  data = config.data
  if data.target_val:
    count = int(reward_records(config, subsets).reduce(0, lambda n, _: n + 1))
  else:
    count = len(subsets.val_indices)
  return count * data.image_size**2 * data.num_channels * 4 <= REWARD_IN_MEMORY_BYTES


def _cached_reward_set(config: Config, records: tf.data.Dataset,
                       decoded_fits: bool) -> tuple[tf.data.Dataset, Callable]:
  """The cached reward set and what still turns its elements into images.

  Decoded once when the images fit in memory (each validation image decoded
  once however many steps draw it); else the encoded bytes are cached and
  each image is decoded when drawn. Decoding is deterministic, so both give
  the same batches.
  """
  if decoded_fits:
    return eval_preprocessed(records, config.data).cache(), lambda dataset: dataset
  return records.cache(), lambda dataset: eval_preprocessed(dataset, config.data)


def eval_preprocessed(dataset: tf.data.Dataset, data: DataConfig,
                      crops: int = 1) -> tf.data.Dataset:
  """(encoded, label) -> (image, label) with evaluation preprocessing, unbatched.

  With crops=10 each image becomes its ten crops, [10, size, size, C].
  """
  preprocess = preprocess_ten_crop if crops == 10 else preprocess_eval
  return dataset.map(lambda image, label: (
      preprocess(decode_image(image, data.num_channels), data), label),
                     num_parallel_calls=AUTOTUNE)


def reward_dataset(config: Config, subsets: TargetSubsets,
                   input_context=None, start_step: int = 0) -> tf.data.Dataset:
  """The reward stream: B_P validation examples per step, served from memory."""
  seed = _pipeline_seed(config.seed, 3, input_context)
  batch = _per_replica_batch(config.reward_batch_size, input_context, 'reward')
  records = reward_records(config, subsets)
  if input_context and input_context.num_input_pipelines > 1:
    records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  dataset, to_images = _cached_reward_set(config, records, decoded_reward_fits(config, subsets))
  dataset = dataset.repeat().shuffle(10_000, seed=seed).skip(
      _batches_before(start_step, input_context) * batch)
  return to_images(dataset).batch(batch, drop_remainder=True).prefetch(AUTOTUNE)


def validation_batches(config: Config, subsets: TargetSubsets) -> tf.data.Dataset:
  """The reward set in order, batched, for validation curves (--eval_every).

  Cached like the reward stream: decoded once when it fits in memory.
  """
  dataset, to_images = _cached_reward_set(config, reward_records(config, subsets),
                                          decoded_reward_fits(config, subsets))
  return to_images(dataset).batch(config.eval_batch_size)


EVAL_SPLITS = ('test', 'val', 'train')


def eval_dataset(config: Config, split: str, crops: int = 1) -> tf.data.Dataset:
  """A finite, ordered pass over a target split with evaluation preprocessing.

  Args:
    config: the run's config.
    split: 'test' (--target_test), 'val' (the reward set) or 'train' (the
      k-shot training subset).
    crops: 1 (one central crop) or 10 (`preprocess_ten_crop`); a batch then
      holds eval_batch_size / 10 images, so the model sees eval_batch_size
      crops per call, as with one crop.
  """
  data = config.data
  if crops not in EVAL_CROPS:
    raise ValueError(f'--crops={crops}: use one of {EVAL_CROPS}.')
  if split == 'test':
    if not data.target_test:
      raise ValueError('Evaluating split=test needs --target_test.')
    records_ = target_records(data.target_test, data)
  elif split == 'val':
    records_ = reward_records(config, target_subsets(config))
  elif split == 'train':
    subsets = target_subsets(config)
    records_ = _take_positions(target_records(data.target_train, data),
                               subsets.train_indices, subsets.num_examples)
  else:
    raise ValueError(f'--split={split!r}: use one of {EVAL_SPLITS}.')
  dataset = eval_preprocessed(records_, data, crops)
  return dataset.batch(max(1, config.eval_batch_size // crops)).prefetch(AUTOTUNE)
