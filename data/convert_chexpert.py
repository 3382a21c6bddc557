r"""CheXpert (CSV + JPEGs) -> the multi-label TFRecords of flags/paper/table7_*.

  python data/convert_chexpert.py --image_root=/data/raw \
      --train_csv=/data/raw/CheXpert-v1.0-small/train.csv \
      --valid_csv=/data/raw/CheXpert-v1.0-small/valid.csv \
      --output_dir=/data/chexpert --num_shards=64

Writes `train-*` (training patients), `reward-*` (a seeded --reward_fraction of
the training patients, all their images: the reward set, --target_val),
`valid-*` (the official validation set: the paper's test set, --target_test)
and `class_names.txt` into --output_dir. Labels are the five observations of
the paper's Table 7, "uncertain" read as positive (U-Ones) unless
--uncertain=negative. The reading and writing live in
`l2tl_tf.chexpert_data`; this is only flags.
"""

import os

from absl import app, flags

from l2tl_tf import chexpert_data

flags.DEFINE_string('image_root', None,
                    'Folder holding the dataset folder that the CSV Paths start with.')
flags.DEFINE_string('train_csv', None, 'CheXpert train.csv.')
flags.DEFINE_string('valid_csv', None, 'CheXpert valid.csv (the test set).')
flags.DEFINE_string('output_dir', None, 'Where the shards and class_names.txt go.')
flags.DEFINE_float('reward_fraction', 0.05, 'Share of training patients held out as rewards.')
flags.DEFINE_integer('seed', 0, 'Seed of the patient split.')
flags.DEFINE_integer('num_shards', 16, 'Shards of the training set (the others get fewer).')
flags.DEFINE_enum('uncertain', 'positive', chexpert_data.UNCERTAIN_POLICIES,
                  'How -1.0 (uncertain) reads: positive (U-Ones, the paper) or negative.')
flags.DEFINE_list('observations', list(chexpert_data.COMPETITION_OBSERVATIONS),
                  'CSV columns to keep, in class-id order.')
flags.DEFINE_integer('image_size', None,
                     'Resize to this square size and store PNG (default: the JPEG bytes as is).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  rows = chexpert_data.read_csv(FLAGS.train_csv, FLAGS.observations, FLAGS.uncertain)
  train, reward = chexpert_data.split_by_patient(rows, FLAGS.reward_fraction, FLAGS.seed)
  valid = chexpert_data.read_csv(FLAGS.valid_csv, FLAGS.observations, FLAGS.uncertain)
  small = max(1, FLAGS.num_shards // 16)
  parts = (('train', train, FLAGS.num_shards), ('reward', reward, small),
           ('valid', valid, small))
  chexpert_data.check_no_shards([os.path.join(FLAGS.output_dir, name) for name, _, _ in parts])
  for name, part, shards in parts:
    pattern = chexpert_data.write_records(part, FLAGS.image_root,
                                          os.path.join(FLAGS.output_dir, name),
                                          FLAGS.observations, shards, FLAGS.image_size)
    print(f'{name}: {len(part)} radiographs of {len({r.patient for r in part})} patients '
          f'-> {pattern}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['image_root', 'train_csv', 'valid_csv', 'output_dir'])
  app.run(main)
