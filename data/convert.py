r"""Converts a labelled image set to sharded ImageNet-style TFRecords.

  python data/convert.py --format=npz --input=set.npz --output_prefix=out/train
  python data/convert.py --format=idx --input=train-images-idx3-ubyte.gz \
      --labels=train-labels-idx1-ubyte.gz --output_prefix=out/train --num_shards=4
  python data/convert.py --format=csv --input=mnist.csv.gz --label_column=0 \
      --output_prefix=out/train
  python data/convert.py --format=folder --input=photos/ --image_size=64 \
      --output_prefix=out/train
  python data/convert.py --format=folder --input=photos_test/ --image_size=64 \
      --class_names=out/class_names.txt --output_prefix=out/test   # same class ids

Writes `{output_prefix}-0000i-of-0000N` shards and `class_names.txt` beside
them, and prints the file pattern to pass as --source_train / --target_train.
The reading and writing live in `l2tl_tf.bench_data`; this is only flags.
"""

import os
import sys

from absl import app, flags

from l2tl_tf import bench_data, records

FORMATS = ('npz', 'idx', 'csv', 'folder')
flags.DEFINE_enum('format', None, FORMATS, 'Input format.')
flags.DEFINE_string('input', None, 'Input file (npz, idx images, csv) or folder of class folders.')
flags.DEFINE_string('labels', None, 'IDX label file (--format=idx only).')
flags.DEFINE_string('output_prefix', None, 'Shard path prefix, e.g. out/train.')
flags.DEFINE_integer('num_shards', 1, 'Number of TFRecord shards.')
flags.DEFINE_string('class_names', None,
                    'Text file, one class name per line. folder: the label space, each '
                    'folder taking the id of its name (pass the training set\'s '
                    'class_names.txt for its test folder). Other formats: names for the '
                    'ids the input stores, overriding npz class_names or the default ids.')
flags.DEFINE_string('image_key', 'x', 'npz: array of images.')
flags.DEFINE_string('label_key', 'y', 'npz: array of labels.')
flags.DEFINE_string('names_key', 'class_names', 'npz: array of class names (if present).')
flags.DEFINE_integer('label_column', -1, 'csv: column of the label (negative: from the end).')
flags.DEFINE_list('image_shape', ['28', '28'], 'csv: shape of one image, e.g. 28,28 or 32,32,3.')
flags.DEFINE_integer('image_size', None, 'folder: resize every image to this square size.')
flags.DEFINE_integer('channels', None, 'folder: 1 or 3 (default: 1 if all are grayscale).')
FLAGS = flags.FLAGS


def read_input() -> bench_data.LabelledImages:
  """The labelled set named by the flags."""
  if FLAGS.format == 'npz':
    data = bench_data.read_npz(FLAGS.input, FLAGS.image_key, FLAGS.label_key, FLAGS.names_key)
  elif FLAGS.format == 'idx':
    if not FLAGS.labels:
      raise app.UsageError('--format=idx needs --labels=LABELS_IDX_FILE.')
    data = bench_data.read_idx(FLAGS.input, FLAGS.labels)
  elif FLAGS.format == 'csv':
    data = bench_data.read_csv(FLAGS.input, FLAGS.label_column,
                               tuple(int(d) for d in FLAGS.image_shape))
  else:
    names = records.read_class_names(FLAGS.class_names) if FLAGS.class_names else None
    return bench_data.read_image_folder(FLAGS.input, FLAGS.image_size, FLAGS.channels, names)
  if FLAGS.class_names:
    data = bench_data.labelled(data.images, data.labels,
                               records.read_class_names(FLAGS.class_names))
  return data


def check_names_beside(output_prefix: str, class_names) -> None:
  """Refuses to overwrite another set's class_names.txt with other names.

  Sets written into one folder share its class_names.txt: a test set whose
  names differ from the training set's would replace them and silently
  relabel the training set.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(output_prefix)), records.CLASS_NAMES_FILE)
  existing = records.read_class_names(path) if os.path.exists(path) else list(class_names)
  if existing != list(class_names):
    sys.exit(f'Error: {path} holds other class names ({len(existing)}, this set has '
             f'{len(class_names)}). Pass --class_names={path} so that this set uses the same '
             'ids, or write it to another folder.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.labels and FLAGS.format != 'idx':
    raise app.UsageError('--labels is for --format=idx only.')
  if not os.path.exists(FLAGS.input):
    sys.exit(f'Error: --input={FLAGS.input} does not exist.')
  data = read_input()
  check_names_beside(FLAGS.output_prefix, data.class_names)
  pattern = bench_data.write_labelled(FLAGS.output_prefix, data, FLAGS.num_shards)
  print(f'Wrote {len(data.labels)} images of shape {data.images.shape[1:]} in '
        f'{data.num_classes} classes to {pattern}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['format', 'input', 'output_prefix'])
  app.run(main)
