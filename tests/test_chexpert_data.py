"""The CheXpert converter: CSV semantics, the patient split, and records the pipeline reads."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import QUIET_ENV
from l2tl_tf import chexpert_data, input_pipeline, preflight, records
from l2tl_tf.config import DataConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ['Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA', 'No Finding',
           'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion', 'Edema',
           'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
           'Pleural Other', 'Fracture', 'Support Devices']
# (patient, study, Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion)
ROWS = [
    (1, 1, '1.0', '', '0.0', '-1.0', ''),
    (1, 2, '', '', '', '', ''),
    (2, 1, '-1.0', '1.0', '', '', '1.0'),
    (3, 1, '0.0', '0.0', '1.0', '', '0.0'),
    (4, 1, '', '-1.0', '', '1.0', ''),
    (5, 1, '1.0', '1.0', '1.0', '1.0', '1.0'),
]
U_ONES = [(0, 3), (), (0, 1, 4), (2,), (1, 3), (0, 1, 2, 3, 4)]
U_ZEROS = [(0,), (), (1, 4), (2,), (3,), (0, 1, 2, 3, 4)]


def _write_dataset(root, rows=ROWS, name='train'):
  """A CheXpert-shaped folder: CheXpert-v1.0-small/{name}.csv and JPEGs of distinct sizes."""
  base = root / 'CheXpert-v1.0-small'
  lines = []
  for i, (patient, study, *values) in enumerate(rows):
    path = f'CheXpert-v1.0-small/{name}/patient{patient:05d}/study{study}/view1_frontal.jpg'
    image = np.full([20 + i, 24, 1], 40 * i, np.uint8)
    (root / os.path.dirname(path)).mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(tf.io.encode_jpeg(image).numpy())
    row = dict.fromkeys(COLUMNS, '')
    row.update(Path=path, Sex='Male', Age='60')
    row.update(zip(chexpert_data.COMPETITION_OBSERVATIONS, values))
    lines.append(row)
  base.mkdir(parents=True, exist_ok=True)
  with open(base / f'{name}.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(lines)
  return str(base / f'{name}.csv')


@pytest.mark.parametrize('uncertain, expected', [('positive', U_ONES), ('negative', U_ZEROS)])
def test_csv_values_read_as_positive_ids(tmp_path, uncertain, expected):
  rows = chexpert_data.read_csv(_write_dataset(tmp_path), uncertain=uncertain)
  assert [row.positives for row in rows] == expected
  assert [row.patient for row in rows] == ['patient00001'] * 2 + [
      f'patient{p:05d}' for p in (2, 3, 4, 5)]


@pytest.mark.parametrize('rows, message', [
    ([(1, 1, '2.0', '', '', '', '')], r"Atelectasis is '2.0'"),
    ([(1, 1, 'yes', '', '', '', '')], r"Atelectasis is 'yes'"),
])
def test_bad_values_are_refused_with_their_line(tmp_path, rows, message):
  with pytest.raises(ValueError, match=r'line 2: ' + message):
    chexpert_data.read_csv(_write_dataset(tmp_path, rows))


def test_a_missing_column_is_refused(tmp_path):
  with pytest.raises(ValueError, match="no column 'Fibrosis'"):
    chexpert_data.read_csv(_write_dataset(tmp_path), observations=['Edema', 'Fibrosis'])


def test_patients_are_split_whole_and_by_seed(tmp_path):
  rows = chexpert_data.read_csv(_write_dataset(tmp_path))
  train, val = chexpert_data.split_by_patient(rows, 0.4, seed=0)
  assert len({r.patient for r in val}) == 2
  assert not {r.patient for r in train} & {r.patient for r in val}
  assert sorted(map(id, train + val)) == sorted(map(id, rows))
  assert chexpert_data.split_by_patient(rows, 0.4, seed=0) == (train, val)
  splits = {tuple(r.patient for r in chexpert_data.split_by_patient(rows, 0.4, s)[1])
            for s in range(8)}
  assert len(splits) > 1


def test_the_script_writes_records_the_multi_label_pipeline_reads(tmp_path):
  train_csv = _write_dataset(tmp_path)
  valid_csv = _write_dataset(tmp_path, ROWS[:3], name='valid')
  out = tmp_path / 'out'
  subprocess.run([sys.executable, os.path.join(ROOT, 'data', 'convert_chexpert.py'),
                  f'--image_root={tmp_path}', f'--train_csv={train_csv}',
                  f'--valid_csv={valid_csv}', f'--output_dir={out}', '--num_shards=2',
                  '--reward_fraction=0.2', '--image_size=16'],
                 check=True, env=QUIET_ENV, capture_output=True, cwd=ROOT)
  data = DataConfig(target_num_classes=5, target_multi_label=True, image_size=16,
                    num_channels=1)
  hot = {name: input_pipeline.scan_target_labels(str(out / f'{name}-*'), data)
         for name in ('train', 'reward', 'valid')}
  assert len(hot['train']) + len(hot['reward']) == len(ROWS) and len(hot['reward']) >= 1
  expected_valid = np.zeros([3, 5])
  for i, positives in enumerate(U_ONES[:3]):
    expected_valid[i, list(positives)] = 1
  np.testing.assert_array_equal(hot['valid'], expected_valid)
  written = {tuple(np.flatnonzero(row)) for row in np.concatenate([hot['train'], hot['reward']])}
  assert written == set(U_ONES)
  assert records.read_class_names(str(out / 'class_names.txt')) == list(
      chexpert_data.COMPETITION_OBSERVATIONS)
  # The preflight reads every record: ids in range, images decode at the new size.
  check = preflight.DatasetCheck('target_train', str(out / 'train-*'), 'target', 5, 0, True,
                                 multi_label=True)
  preflight.check_labels(check, preflight.scan_dataset(check, data))
  encoded, _ = next(iter(input_pipeline.target_records(str(out / 'valid-*'), data)))
  assert tuple(tf.io.decode_png(encoded).shape) == (16, 16, 1)


def test_a_second_conversion_into_the_same_folder_is_refused(tmp_path):
  """The flagfiles read train-*: two conversions' shards would both be read."""
  rows = chexpert_data.read_csv(_write_dataset(tmp_path))
  prefix = str(tmp_path / 'out' / 'train')
  chexpert_data.write_records(rows, str(tmp_path), prefix, num_shards=2)
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'class_names.txt', 'train-00000-of-00002', 'train-00001-of-00002']
  with pytest.raises(ValueError, match=r'2 file\(s\) already match .*train-\*'):
    chexpert_data.write_records(rows, str(tmp_path), prefix, num_shards=3)


def test_the_script_checks_every_split_before_writing_any(tmp_path):
  """An old valid-* alone must stop the conversion before hours of train-* are written."""
  train_csv = _write_dataset(tmp_path)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'valid-00000-of-00001').write_bytes(b'')
  completed = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'data', 'convert_chexpert.py'),
       f'--image_root={tmp_path}', f'--train_csv={train_csv}', f'--valid_csv={train_csv}',
       f'--output_dir={out}', '--reward_fraction=0.2'],
      env=QUIET_ENV, capture_output=True, text=True, cwd=ROOT)
  assert completed.returncode != 0
  assert 'already match' in completed.stderr and 'valid-*' in completed.stderr
  assert sorted(os.listdir(out)) == ['valid-00000-of-00001']
