"""CheXpert's CSV and JPEGs -> multi-label ImageNet-style TFRecords (Table 7's target).

CheXpert (Irvin et al., 2019) ships `train.csv` and `valid.csv`: one row per
radiograph, `Path` relative to the folder that holds the dataset's top
folder, and one column per observation holding 1.0 (positive), 0.0
(negative), -1.0 (uncertain) or nothing (not mentioned). The paper scores
five observations and maps "uncertain" to positive ("U-Ones"). Each record
written here lists the ids of its positive observations in
`image/class/label` (the multi-label form `--target_multi_label` reads), with
the observation names in `class_names.txt`.

The reward set must not share patients with the training set (radiographs of
one patient look alike), so `split_by_patient` divides patients, not images.
Images are written as the original JPEG bytes, or resized and re-encoded as
PNG with `image_size`; they are streamed one at a time (224,316 radiographs do
not fit in memory decoded).
"""

import csv
import dataclasses
import os
import re
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from l2tl_tf import records

# The paper's Table 7 columns, in its order: the competition's five observations.
COMPETITION_OBSERVATIONS = ('Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema',
                            'Pleural Effusion')
UNCERTAIN_POLICIES = ('positive', 'negative')
_PATIENT = re.compile(r'(patient\d+)')


@dataclasses.dataclass(frozen=True)
class Radiograph:
  """One CSV row: where the image is, whose it is, and its positive observations."""
  path: str
  patient: str
  positives: tuple


def read_csv(path: str, observations: Sequence[str] = COMPETITION_OBSERVATIONS,
             uncertain: str = 'positive') -> list[Radiograph]:
  """The rows of a CheXpert CSV with their positive observation ids.

  Args:
    path: train.csv or valid.csv.
    observations: the columns to keep; id i is observations[i].
    uncertain: 'positive' (U-Ones, the paper's choice) or 'negative' (U-Zeros)
      for -1.0 entries.

  Raises:
    ValueError: for a missing column, a value other than 1, 0, -1 or empty,
      or a Path without a patientNNNNN folder.
  """
  if uncertain not in UNCERTAIN_POLICIES:
    raise ValueError(f'uncertain={uncertain!r}: use one of {UNCERTAIN_POLICIES}.')
  positive_values = {1.0, -1.0} if uncertain == 'positive' else {1.0}
  with tf.io.gfile.GFile(path, 'r') as f:
    reader = csv.DictReader(f)
    missing = [name for name in ('Path', *observations) if name not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f'{path} has no column {missing[0]!r} (columns: {reader.fieldnames}).')
    return [_radiograph(row, line, path, observations, positive_values)
            for line, row in enumerate(reader, start=2)]


def _radiograph(row: dict, line: int, path: str, observations: Sequence[str],
                positive_values: set) -> Radiograph:
  patient = _PATIENT.search(row['Path'])
  if not patient:
    raise ValueError(f'{path}, line {line}: Path {row["Path"]!r} names no patientNNNNN folder.')
  positives = []
  for cls, name in enumerate(observations):
    text = row[name].strip()
    try:
      value = float(text) if text else 0.0
    except ValueError:
      value = None
    if value not in (1.0, 0.0, -1.0):
      raise ValueError(f'{path}, line {line}: {name} is {text!r}; CheXpert uses 1.0, 0.0, '
                       '-1.0 (uncertain) or empty (not mentioned).')
    if value in positive_values:
      positives.append(cls)
  return Radiograph(row['Path'], patient.group(1), tuple(positives))


def split_by_patient(rows: Sequence[Radiograph], val_fraction: float,
                     seed: int) -> tuple[list[Radiograph], list[Radiograph]]:
  """(train, val): a seeded `val_fraction` of the patients, with all their images, to val."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f'val_fraction={val_fraction} must be in [0, 1).')
  patients = sorted({row.patient for row in rows})
  chosen = np.random.default_rng([seed, 7]).permutation(len(patients))
  val_patients = {patients[i] for i in chosen[:round(val_fraction * len(patients))]}
  return ([row for row in rows if row.patient not in val_patients],
          [row for row in rows if row.patient in val_patients])


def _encoded(image_path: str, image_size: Optional[int]) -> bytes:
  """The file's bytes, or the image resized to a square grayscale PNG."""
  data = tf.io.gfile.GFile(image_path, 'rb').read()
  if not image_size:
    return data
  image = tf.io.decode_image(data, channels=1, expand_animations=False)
  image = tf.image.resize(image, [image_size, image_size], antialias=True)
  return tf.io.encode_png(tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)).numpy()


def check_no_shards(prefixes: Sequence[str]) -> None:
  """Refuses prefixes that files already match (`{prefix}-*`).

  The flagfiles read `train-*`: shards left by a conversion with another
  shard count would be read too. The converter checks every split's prefix
  before it writes any.
  """
  for prefix in prefixes:
    existing = tf.io.gfile.glob(f'{prefix}-*')
    if existing:
      raise ValueError(f'{len(existing)} file(s) already match {prefix}-* ({existing[0]}, '
                       '...): delete them or write to another --output_dir, so that no '
                       'pattern reads two conversions.')


def write_records(rows: Iterable[Radiograph], image_root: str, prefix: str,
                  observations: Sequence[str] = COMPETITION_OBSERVATIONS,
                  num_shards: int = 1, image_size: Optional[int] = None) -> str:
  """Writes the rows' images and positive ids as TFRecord shards; returns their pattern.

  Shards are written under hidden temporary names (which no `{prefix}-*`
  pattern matches) and renamed when all are complete. Files already matching
  `{prefix}-*` are refused: the flagfiles read `train-*`, so shards left by a
  conversion with another shard count would be read too.
  """
  rows = list(rows)
  if len(rows) < num_shards:
    raise ValueError(f'{len(rows)} radiographs cannot fill {num_shards} shards of {prefix} '
                     '(an empty shard is refused when read): lower the shard count.')
  # Not abspath: it would turn gs://bucket/out into a local folder.
  directory = os.path.dirname(prefix) or '.'
  tf.io.gfile.makedirs(directory)
  check_no_shards([prefix])
  names = [f'{prefix}-{i:05d}-of-{num_shards:05d}' for i in range(num_shards)]
  partials = [os.path.join(directory, f'.{os.path.basename(name)}.partial') for name in names]
  writers = [tf.io.TFRecordWriter(partial) for partial in partials]
  for index, row in enumerate(rows):
    image_path = os.path.join(image_root, row.path)
    if not tf.io.gfile.exists(image_path):
      raise ValueError(f'{image_path} does not exist: --image_root must be the folder that '
                       f'holds {row.path.split("/")[0]}/.')
    example = records.make_example(_encoded(image_path, image_size), list(row.positives))
    writers[index % num_shards].write(example.SerializeToString())
  for writer in writers:
    writer.close()
  for partial, name in zip(partials, names):
    tf.io.gfile.rename(partial, name, overwrite=True)
  records.write_class_names(directory, observations)
  return f'{prefix}-*-of-{num_shards:05d}'
