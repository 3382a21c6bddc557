"""ImageNet-style TFRecords: the on-disk format every pipeline reads.

Each record is a `tf.train.Example` with `image/encoded` (PNG or JPEG bytes)
and `image/class/label` (int64), the feature names of the ImageNet TFRecords
that TPU reference models read. A multi-label target (CheXpert) stores the ids
of an image's positive classes in the same feature, any number of them (none
included), so a single-label file also reads as a multi-label one. Builders in
`data/`, the demo and the tests all write through `write_image_records`, so
the reader has one format to trust.
"""

import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

IMAGE_KEY = 'image/encoded'
LABEL_KEY = 'image/class/label'
CLASS_NAMES_FILE = 'class_names.txt'

FEATURE_SPEC = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 HxW or HxWxC array."""
  if image.ndim == 2:
    image = image[..., None]
  return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


MULTI_LABEL_FEATURE_SPEC = {
    IMAGE_KEY: FEATURE_SPEC[IMAGE_KEY],
    LABEL_KEY: tf.io.RaggedFeature(tf.int64),
}


def parse_example(serialized: tf.Tensor,
                  multi_label: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
  """(encoded image bytes, stored label) of one serialized record.

  The label is an int64 scalar, or with `multi_label` the int64 vector of
  the record's positive class ids (possibly empty).
  """
  if not multi_label:
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    return parsed[IMAGE_KEY], parsed[LABEL_KEY]
  parsed = tf.io.parse_single_example(serialized, MULTI_LABEL_FEATURE_SPEC)
  # An absent feature parses as an empty list, which reads as an image with no
  # positive class: labels written under another key would train silently on
  # all-negative targets.
  labelled = tf.debugging.Assert(_has_feature(serialized, LABEL_KEY), [
      f'A record has no {LABEL_KEY} feature: a multi-label record lists its positive class '
      'ids there (an empty list for an image with none).'])
  with tf.control_dependencies([labelled]):
    return parsed[IMAGE_KEY], tf.identity(parsed[LABEL_KEY])


def _has_feature(serialized: tf.Tensor, key: str) -> tf.Tensor:
  """Whether a serialized tf.train.Example has the feature `key` (even an empty one)."""
  features = tf.io.decode_proto(serialized, 'tensorflow.Example', ['features'],
                                [tf.string]).values[0]
  entries = tf.io.decode_proto(features, 'tensorflow.Features', ['feature'],
                               [tf.string]).values[0]
  keys = tf.io.decode_proto(entries, 'tensorflow.Features.FeatureEntry', ['key'],
                            [tf.string]).values[0]
  return tf.reduce_any(tf.equal(keys, key))


def make_example(encoded_image: bytes, label) -> tf.train.Example:
  """A record of one image; `label` is a class id, or a list of them (multi-label)."""
  ids = [int(i) for i in np.atleast_1d(np.asarray(label, np.int64))]
  return tf.train.Example(features=tf.train.Features(feature={
      IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded_image])),
      LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
  }))


def write_image_records(prefix: str, images: np.ndarray, labels: Sequence[int],
                        num_shards: int = 1,
                        class_names: Optional[Sequence[str]] = None,
                        label_offset: int = 0) -> str:
  """Writes images as PNG-encoded ImageNet-style TFRecord shards.

  Args:
    prefix: path prefix; shards are `{prefix}-00000-of-00004`.
    images: uint8 array [N, H, W] or [N, H, W, C].
    labels: N class ids (0-based; `label_offset` is added when stored, e.g. 1
      to mimic 1-based ImageNet files), or N lists of positive class ids for
      a multi-label target.
    num_shards: examples are dealt round-robin so every shard is non-empty
      when N >= num_shards.
    class_names: written to `class_names.txt` beside the shards when given.
    label_offset: added to every stored label.

  Returns:
    The file pattern matching the written shards.
  """
  images = np.asarray(images)
  labels = list(labels)
  if len(images) != len(labels):
    raise ValueError(f'{len(images)} images but {len(labels)} labels for {prefix}.')
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  writers = [tf.io.TFRecordWriter(f'{prefix}-{i:05d}-of-{num_shards:05d}')
             for i in range(num_shards)]
  for index, (image, label) in enumerate(zip(images, labels)):
    example = make_example(encode_png(image), np.asarray(label, np.int64) + label_offset)
    writers[index % num_shards].write(example.SerializeToString())
  for writer in writers:
    writer.close()
  if class_names is not None:
    write_class_names(os.path.dirname(os.path.abspath(prefix)), class_names)
  return f'{prefix}-*-of-{num_shards:05d}'


def write_class_names(directory: str, class_names: Sequence[str]) -> str:
  path = os.path.join(directory, CLASS_NAMES_FILE)
  with tf.io.gfile.GFile(path, 'w') as f:
    for name in class_names:
      f.write(str(name).replace('\n', ' ') + '\n')
  return path


def read_class_names(path: str) -> list[str]:
  """One name per line; any filesystem tf.io.gfile reaches (gs:// sources too).

  Lines end at newlines only (as text-mode reading does): glyph names may be
  characters that `str.splitlines` would also split at.
  """
  with tf.io.gfile.GFile(path, 'r') as f:
    lines = f.read().replace('\r\n', '\n').replace('\r', '\n').split('\n')
  return lines[:-1] if lines[-1] == '' else lines

