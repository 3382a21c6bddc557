"""Tests for the benchmark data: readers, splits and scenario assembly.

Readers run on tiny files written here; scenarios are built from tiny
synthetic stand-ins of glyphs, MNIST-5k and Fashion-MNIST whose images are
all distinct, so an image's bytes say where it came from.
"""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import read_records
from l2tl_tf import bench_data, input_pipeline, records
from l2tl_tf.config import DataConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = bench_data.BuildOptions(pool_per_class=4, val_per_class=3, source_shards=2,
                                  target_shards=1)
GLYPH_NAMES = tuple('abcdefghijkl')


def _images(rng, count, shape=(28, 28)):
  return rng.integers(0, 256, size=(count,) + shape, dtype=np.uint8)


def _stand_in(rng, per_class, names):
  labels = np.repeat(np.arange(len(names)), per_class)
  return bench_data.labelled(_images(rng, len(labels)), rng.permutation(labels), names)


@pytest.fixture(scope='module')
def raw():
  rng = np.random.default_rng(7)
  digits = tuple(str(i) for i in range(10))
  return bench_data.RawArrays({
      'glyphs': _stand_in(rng, 6, GLYPH_NAMES),
      'mnist': _stand_in(rng, 20, digits),
      'fashion_train': _stand_in(rng, 24, bench_data.FASHION_MNIST_CLASS_NAMES),
      'fashion_test': _stand_in(rng, 5, bench_data.FASHION_MNIST_CLASS_NAMES),
  })


@pytest.fixture(scope='module')
def built(raw, tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp('bench'))
  scenarios = {name: bench_data.build_scenario(name, out_dir, 0, raw, OPTIONS, log=lambda _: None)
               for name in bench_data.SCENARIOS}
  return out_dir, scenarios


def _bytes(images):
  return {image.tobytes() for image in images}


def _datasets(out_dir, name):
  return bench_data.read_scenario(bench_data.scenario_dir(out_dir, name, 0))['datasets']


# ---------------------------------------------------------------- readers

def test_read_npz_with_and_without_names(tmp_path):
  rng = np.random.default_rng(0)
  images, labels = _images(rng, 6), np.array([0, 1, 2, 0, 1, 2])
  np.savez(tmp_path / 'named.npz', x=images, y=labels, class_names=np.array(['a', 'b', 'c']))
  np.savez(tmp_path / 'bare.npz', pixels=images, target=labels)
  named = bench_data.read_npz(str(tmp_path / 'named.npz'))
  assert np.array_equal(named.images, images) and named.labels.tolist() == labels.tolist()
  assert named.class_names == ('a', 'b', 'c')
  bare = bench_data.read_npz(str(tmp_path / 'bare.npz'), image_key='pixels', label_key='target')
  assert bare.class_names == ('0', '1', '2')
  with pytest.raises(KeyError, match='no array'):
    bench_data.read_npz(str(tmp_path / 'bare.npz'))


def _write_idx(path, array, compress):
  header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(
      f'>{array.ndim}I', *array.shape)
  with (gzip.open if compress else open)(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize('compress', [True, False])
def test_read_idx(tmp_path, compress):
  rng = np.random.default_rng(1)
  images, labels = _images(rng, 5, (4, 3)), np.array([3, 0, 1, 3, 2], np.uint8)
  _write_idx(tmp_path / 'images', images, compress)
  _write_idx(tmp_path / 'labels', labels, compress)
  data = bench_data.read_idx(str(tmp_path / 'images'), str(tmp_path / 'labels'))
  assert np.array_equal(data.images, images) and data.images.shape == (5, 4, 3)
  assert data.labels.tolist() == labels.tolist() and data.class_names == ('0', '1', '2', '3')
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x08\x01' + bytes(8))
  with pytest.raises(ValueError, match='not an IDX file'):
    bench_data.read_idx_array(str(tmp_path / 'bad'))
  _write_idx(tmp_path / 'short', images, compress)
  content = (gzip.open if compress else open)(tmp_path / 'short', 'rb').read()
  (tmp_path / 'truncated').write_bytes(content[:-3])
  with pytest.raises(ValueError, match='bytes follow'):
    bench_data.read_idx_array(str(tmp_path / 'truncated'))


def test_read_csv_header_label_first_gz_and_fractions(tmp_path):
  rng = np.random.default_rng(2)
  images, labels = _images(rng, 4, (2, 3)), np.array([1, 0, 1, 2])
  rows = ['label,' + ','.join(f'p{i}' for i in range(6))]
  rows += [','.join([str(l)] + [str(v) for v in image.reshape(-1)])
           for l, image in zip(labels, images)]
  with gzip.open(tmp_path / 'set.csv.gz', 'wt') as f:
    f.write('\n'.join(rows) + '\n')
  data = bench_data.read_csv(str(tmp_path / 'set.csv.gz'), label_column=0, image_shape=(2, 3))
  assert np.array_equal(data.images, images) and data.labels.tolist() == labels.tolist()
  # Label last, no header, pixels as fractions of 1.
  table = np.concatenate([images.reshape(4, -1) / 255.0, labels[:, None]], axis=1)
  np.savetxt(tmp_path / 'frac.csv', table, delimiter=',')
  data = bench_data.read_csv(str(tmp_path / 'frac.csv'), image_shape=(2, 3))
  assert np.array_equal(data.images, images) and data.labels.tolist() == labels.tolist()
  with pytest.raises(ValueError, match='columns'):
    bench_data.read_csv(str(tmp_path / 'frac.csv'))


def test_read_image_folder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  images = _images(rng, 5, (6, 6))
  for i, (name, image) in enumerate(zip(['cat', 'cat', 'dog', 'emu', 'emu'], images)):
    os.makedirs(tmp_path / 'set' / name, exist_ok=True)
    Image.fromarray(image).save(tmp_path / 'set' / name / f'{i}.png')
  (tmp_path / 'set' / 'cat' / 'notes.txt').write_text('not an image')
  data = bench_data.read_image_folder(str(tmp_path / 'set'))
  assert data.class_names == ('cat', 'dog', 'emu') and data.labels.tolist() == [0, 0, 1, 2, 2]
  assert np.array_equal(data.images, images)
  Image.fromarray(_images(rng, 1, (9, 7))[0]).convert('RGB').save(tmp_path / 'set' / 'dog' / 'x.png')
  with pytest.raises(ValueError, match='sizes'):
    bench_data.read_image_folder(str(tmp_path / 'set'))
  resized = bench_data.read_image_folder(str(tmp_path / 'set'), image_size=8)
  assert resized.images.shape == (6, 8, 8, 3)


def _folder_set(root, classes, rng, per_class=2, shape=(6, 6)):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name in classes:
    os.makedirs(root / name, exist_ok=True)
    for i in range(per_class):
      Image.fromarray(_images(rng, 1, shape)[0]).save(root / name / f'{i}.png')


def test_a_folder_missing_a_class_keeps_the_training_ids(tmp_path):
  """Ids by sorted folder name shifted 'fox' to 1 in a test folder without 'dog'."""
  rng = np.random.default_rng(5)
  _folder_set(tmp_path / 'train', ['cat', 'dog', 'fox'], rng)
  _folder_set(tmp_path / 'test', ['cat', 'fox'], rng)
  os.makedirs(tmp_path / 'test' / '.ipynb_checkpoints')  # hidden: not a class
  train = bench_data.read_image_folder(str(tmp_path / 'train'))
  test = bench_data.read_image_folder(str(tmp_path / 'test'), class_names=train.class_names)
  assert test.class_names == ('cat', 'dog', 'fox') and test.labels.tolist() == [0, 0, 2, 2]
  assert bench_data.read_image_folder(str(tmp_path / 'test')).class_names == ('cat', 'fox')
  _folder_set(tmp_path / 'test', ['emu'], rng)
  with pytest.raises(ValueError, match=r"class folders \['emu'\] that are not in the 3 given"):
    bench_data.read_image_folder(str(tmp_path / 'test'), class_names=train.class_names)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  levels = (np.arange(64, dtype=np.uint16) * 1024).reshape(8, 8)
  os.makedirs(tmp_path / 'set' / 'a')
  Image.fromarray(levels).save(tmp_path / 'set' / 'a' / 'deep.png')
  data = bench_data.read_image_folder(str(tmp_path / 'set'))
  np.testing.assert_array_equal(data.images[0], (levels >> 8).astype(np.uint8))


def test_a_folder_larger_than_the_open_file_limit_reads(tmp_path):
  """Every file used to stay open until all were loaded: 'Too many open files'."""
  _folder_set(tmp_path / 'set', ['a', 'b'], np.random.default_rng(6), per_class=60)
  script = (
      'import resource, sys\n'
      'resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit('
      'resource.RLIMIT_NOFILE)[1]))\n'
      'from l2tl_tf import bench_data\n'
      f'print(len(bench_data.read_image_folder({str(tmp_path / "set")!r}).labels))\n')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split()[-1] == '120'


def test_convert_cli_keeps_one_label_space_per_folder(tmp_path):
  """A test set written beside the training set must not replace its class names."""
  rng = np.random.default_rng(7)
  _folder_set(tmp_path / 'train', ['cat', 'dog', 'fox'], rng)
  _folder_set(tmp_path / 'test', ['cat', 'fox'], rng)
  out = tmp_path / 'out'

  def convert(folder, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, 'data', 'convert.py'), '--format=folder',
         f'--input={tmp_path / folder}', f'--output_prefix={out / folder}', *extra],
        capture_output=True, text=True, timeout=120, check=False)
  assert convert('train').returncode == 0
  refused = convert('test')
  assert refused.returncode != 0 and 'holds other class names' in refused.stderr
  assert records.read_class_names(str(out / 'class_names.txt')) == ['cat', 'dog', 'fox']
  done = convert('test', f'--class_names={out / "class_names.txt"}')
  assert done.returncode == 0, done.stderr[-2000:]
  labels = input_pipeline.scan_labels(str(out / 'test-*-of-00001'), DataConfig(), 0)
  assert sorted(labels.tolist()) == [0, 0, 2, 2]


def test_write_dataset_reads_back_with_names(tmp_path):
  rng = np.random.default_rng(4)
  images, labels = _images(rng, 7), np.array([0, 1, 2, 0, 1, 2, 0])
  pattern = bench_data.write_dataset(str(tmp_path / 'd' / 'train'), images, labels,
                                     ['x', 'y', 'z'], num_shards=3)
  assert len(input_pipeline.list_files(pattern)) == 3
  got_images, got_labels = read_records(pattern)
  order = [_bytes([image]).pop() for image in got_images]
  expected = {image.tobytes(): label for image, label in zip(images, labels)}
  assert [expected[key] for key in order] == got_labels.tolist()
  assert records.read_class_names(str(tmp_path / 'd' / 'class_names.txt')) == ['x', 'y', 'z']


# ---------------------------------------------------------------- splits

def test_split_per_class_is_disjoint_sized_and_seeded():
  labels = np.repeat(np.arange(4), 12)
  split = bench_data.split_per_class(labels, val_per_class=3, seed=5, train_per_class=4)
  parts = [split.train, split.val, split.test]
  assert sum(len(p) for p in parts) == 48 and len(np.unique(np.concatenate(parts))) == 48
  assert np.bincount(labels[split.val]).tolist() == [3] * 4
  assert np.bincount(labels[split.train]).tolist() == [4] * 4
  assert np.bincount(labels[split.test]).tolist() == [5] * 4
  again = bench_data.split_per_class(labels, val_per_class=3, seed=5, train_per_class=4)
  other = bench_data.split_per_class(labels, val_per_class=3, seed=6, train_per_class=4)
  assert all(np.array_equal(a, b) for a, b in zip(parts, [again.train, again.val, again.test]))
  assert not np.array_equal(np.sort(split.val), np.sort(other.val))
  # Classes are mixed, not in blocks.
  assert len(set(labels[split.test][:4])) > 1 or len(set(labels[split.test][4:8])) > 1


def test_split_per_class_open_ended_parts_and_errors():
  labels = np.repeat(np.arange(3), 10)
  split = bench_data.split_per_class(labels, val_per_class=2, test_per_class=3, seed=0)
  assert np.bincount(labels[split.train]).tolist() == [5] * 3
  split = bench_data.split_per_class(labels, 2, test_per_class=0, seed=0, train_per_class=4)
  assert len(split.test) == 0 and len(split.train) == 12
  with pytest.raises(ValueError, match='train_per_class or test_per_class'):
    bench_data.split_per_class(labels, 2)
  with pytest.raises(ValueError, match='fewer than'):
    bench_data.split_per_class(labels, 5, test_per_class=3, train_per_class=4)


def test_halve_per_class():
  labels = np.repeat(np.arange(3), [4, 5, 6])
  first, second = bench_data.halve_per_class(labels, seed=1)
  assert not set(first) & set(second) and len(first) + len(second) == 15
  assert np.bincount(labels[first]).tolist() == [2, 2, 3]
  assert np.array_equal(first, bench_data.halve_per_class(labels, seed=1)[0])


def test_concatenate_refuses_colliding_names():
  one = bench_data.labelled(np.zeros([1, 2, 2], np.uint8), [0], ['0'])
  with pytest.raises(ValueError, match='collide'):
    bench_data.concatenate([(one, ''), (one, '')])
  assert bench_data.concatenate([(one, ''), (one, 'digit ')]).class_names == ('0', 'digit 0')


# ---------------------------------------------------------------- scenarios

@pytest.mark.parametrize('name', list(bench_data.SCENARIOS))
def test_scenario_json_patterns_match_files(built, name):
  out_dir, _ = built
  scenario = bench_data.read_scenario(bench_data.scenario_dir(out_dir, name, 0))
  assert scenario['name'] == name and scenario['split_seed'] == 0
  assert scenario['image_size'] == 28 and scenario['channels'] == 1
  for dataset in scenario['datasets'].values():
    assert len(input_pipeline.list_files(dataset['pattern'])) == dataset['num_shards']
    labels = input_pipeline.scan_labels(dataset['pattern'], DataConfig(), 0)
    assert len(labels) == dataset['num_examples']
    assert len(np.unique(labels)) == dataset['classes_present']
    names = records.read_class_names(dataset['class_names_file'])
    assert len(names) == dataset['num_classes'] and labels.max() < len(names)


def test_source_class_names_and_planted_ids(built):
  out_dir, scenarios = built
  digits = scenarios['digits-planted']
  fashion = scenarios['fashion-planted']
  fashion_names = list(bench_data.FASHION_MNIST_CLASS_NAMES)
  digit_names = [str(i) for i in range(10)]
  expected = {
      'digits': list(GLYPH_NAMES) + fashion_names,
      'fashion': list(GLYPH_NAMES) + [f'digit {d}' for d in digit_names],
      'digits-planted': list(GLYPH_NAMES) + fashion_names + [f'planted {d}' for d in digit_names],
      'fashion-planted': list(GLYPH_NAMES) + [f'digit {d}' for d in digit_names]
                         + [f'planted {n}' for n in fashion_names],
  }
  for name, names in expected.items():
    source = _datasets(out_dir, name)['source']
    assert records.read_class_names(source['class_names_file']) == names
    assert scenarios[name]['source_num_classes'] == len(names)
  assert digits['planted_class_ids'] == list(range(22, 32))
  assert fashion['planted_class_ids'] == list(range(22, 32))
  assert scenarios['digits']['planted_class_ids'] == []
  assert digits['target_class_names'] == digit_names
  assert fashion['target_class_names'] == fashion_names


@pytest.mark.parametrize('name,target', [('digits-planted', 'mnist'),
                                         ('fashion-planted-heldout', 'fashion_train')])
def test_planted_images_are_labelled_half_and_never_in_the_target(built, raw, name, target):
  out_dir, scenarios = built
  datasets = _datasets(out_dir, name)
  first_planted = scenarios[name]['planted_class_ids'][0]
  source_images, source_labels = read_records(datasets['source']['pattern'])
  planted = source_labels >= first_planted
  original = raw.load(target)
  class_of = {image.tobytes(): label for image, label in zip(original.images, original.labels)}
  # Each planted image is a target image of the class its name says.
  assert [class_of[image.tobytes()] for image in source_images[planted]] == (
      source_labels[planted] - first_planted).tolist()
  assert np.bincount(source_labels[planted] - first_planted).tolist() == [
      count // 2 for count in np.bincount(original.labels)]
  target_bytes = set()
  for split in ('train', 'val', 'test'):
    images, _ = read_records(datasets[f'target_{split}']['pattern'])
    assert not _bytes(images) & target_bytes, 'target splits overlap'
    target_bytes |= _bytes(images)
  assert not _bytes(source_images[planted]) & target_bytes
  # The oracle is exactly the planted classes.
  oracle_images, oracle_labels = read_records(datasets['oracle']['pattern'])
  assert _bytes(oracle_images) == _bytes(source_images[planted])
  assert oracle_labels.min() == first_planted


def test_target_splits_sizes_and_sources(built, raw):
  out_dir, _ = built
  digits = _datasets(out_dir, 'digits')
  counts = {split: digits[f'target_{split}']['num_examples'] for split in ('train', 'val', 'test')}
  assert counts == {'train': 40, 'val': 30, 'test': 130}  # 20 per class: 4 + 3 + 13.
  planted = _datasets(out_dir, 'digits-planted')
  assert planted['target_test']['num_examples'] == 30  # 10 left per class: 4 + 3 + 3.
  fashion = _datasets(out_dir, 'fashion-planted')
  test_images, test_labels = read_records(fashion['target_test']['pattern'])
  official = raw.load('fashion_test')
  assert _bytes(test_images) == _bytes(official.images) and len(test_labels) == 50
  _, train_labels = read_records(fashion['target_train']['pattern'])
  assert np.bincount(train_labels).tolist() == [4] * 10


def test_heldout_pretraining_lacks_planted_classes(built):
  out_dir, scenarios = built
  for name in ('digits-planted-heldout', 'fashion-planted-heldout'):
    datasets = _datasets(out_dir, name)
    assert datasets['pretrain']['pattern'] != datasets['source']['pattern']
    labels = input_pipeline.scan_labels(datasets['pretrain']['pattern'], DataConfig(), 0)
    planted = scenarios[name]['planted_class_ids']
    assert not set(labels.tolist()) & set(planted)
    assert set(labels.tolist()) == set(range(planted[0]))
    # Same label space as the source, so the pretrained head fits the L2TL run.
    assert (records.read_class_names(datasets['pretrain']['class_names_file'])
            == records.read_class_names(datasets['source']['class_names_file']))
  for name in ('digits', 'digits-planted', 'fashion-planted'):
    datasets = _datasets(out_dir, name)
    assert datasets['pretrain'] == datasets['source']
    assert ('oracle' in datasets) == ('planted' in name)


def _tree(directory):
  return {os.path.relpath(os.path.join(root, name), directory):
          open(os.path.join(root, name), 'rb').read()
          for root, _, names in os.walk(directory) for name in names}


def test_build_is_deterministic_cached_and_rebuilt_on_change(built, raw, tmp_path):
  out_dir, _ = built
  logs = []
  bench_data.build_scenario('digits-planted', str(tmp_path), 0, raw, OPTIONS, log=logs.append)
  first = _tree(bench_data.scenario_dir(str(tmp_path), 'digits-planted', 0))
  assert first == _tree(bench_data.scenario_dir(out_dir, 'digits-planted', 0))
  bench_data.build_scenario('digits-planted', str(tmp_path), 0, raw, OPTIONS, log=logs.append)
  assert logs[-1].startswith('Reusing')
  changed = bench_data.BuildOptions(pool_per_class=5, val_per_class=3, source_shards=2)
  bench_data.build_scenario('digits-planted', str(tmp_path), 0, raw, changed, log=logs.append)
  assert logs[-1].startswith('Built')
  bench_data.build_scenario('digits-planted', str(tmp_path), 1, raw, OPTIONS, log=logs.append)
  other_seed = _tree(bench_data.scenario_dir(str(tmp_path), 'digits-planted', 1))
  assert other_seed['target/val-00000-of-00001'] != first['target/val-00000-of-00001']


def test_missing_inputs_name_the_fix(tmp_path):
  raw = bench_data.RawFiles(str(tmp_path / 'glyphs.npz'), str(tmp_path / 'mnist5k.npz'),
                            str(tmp_path / 'fashion'))
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    raw.check(['fashion_train'])
  with pytest.raises(FileNotFoundError, match='--glyphs'):
    bench_data.build_scenario('digits', str(tmp_path / 'out'), 0, raw)
  assert not os.path.exists(tmp_path / 'out')


def test_convert_cli_writes_records(tmp_path):
  rng = np.random.default_rng(9)
  np.savez(tmp_path / 'set.npz', x=_images(rng, 6), y=np.arange(6) % 3,
           class_names=np.array(['r', 's', 't']))
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'data', 'convert.py'), '--format=npz',
       f'--input={tmp_path / "set.npz"}', f'--output_prefix={tmp_path / "out" / "train"}',
       '--num_shards=2'], capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Wrote 6 images' in result.stdout
  assert len(input_pipeline.list_files(str(tmp_path / 'out' / 'train-*-of-00002'))) == 2
  assert records.read_class_names(str(tmp_path / 'out' / 'class_names.txt')) == ['r', 's', 't']


def test_caps_shrink_the_source_but_not_the_target(built, raw, tmp_path):
  out_dir, scenarios = built
  capped = bench_data.BuildOptions(pool_per_class=4, val_per_class=3, source_shards=2,
                                   max_source_per_class=5, max_planted_per_class=7)
  scenario = bench_data.build_scenario('fashion-planted', str(tmp_path), 0, raw, capped,
                                       log=lambda _: None)
  labels = input_pipeline.scan_labels(
      str(tmp_path / 'fashion-planted' / 'split0' / scenario['datasets']['source']['pattern']),
      DataConfig(), 0)
  counts = np.bincount(labels)
  assert counts[:12].tolist() == [5] * 12 and counts[12:22].tolist() == [5] * 10
  assert counts[22:].tolist() == [7] * 10
  capped_tree = _tree(bench_data.scenario_dir(str(tmp_path), 'fashion-planted', 0))
  full_tree = _tree(bench_data.scenario_dir(out_dir, 'fashion-planted', 0))
  for split in ('train', 'val', 'test'):
    name = f'target/{split}-00000-of-00001'
    assert capped_tree[name] == full_tree[name]


@pytest.mark.parametrize('labels, names, message', [
    ([0, 1.7, 2], None, r'whole numbers >= 0; found \[1.7\]'),  # was cut to 1
    ([0, -1, 2], None, r'whole numbers >= 0; found \[-1\]'),
    ([0, 1], None, '3 images but 2 labels'),
    ([0, 1, 3], ['a', 'b', 'c'], 'Label 3 has no name: 3 class names'),
])
def test_labels_that_cannot_be_class_ids_are_refused(labels, names, message):
  with pytest.raises(ValueError, match=message):
    bench_data.labelled(np.zeros((3, 4, 4), np.uint8), np.array(labels), names)
