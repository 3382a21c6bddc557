"""Offline benchmark data: readers, seeded splits and the transfer scenarios.

The accuracy benchmark tests L2TL on real images that need no download
(`../shared/bench-data/README.md`): printed glyphs, MNIST-5k and
Fashion-MNIST. This module turns them into the ImageNet-style TFRecords every
pipeline reads (`records.write_image_records`), with `class_names.txt` beside
each dataset so rankings print names.

Three layers, each usable alone:
  * readers (`read_npz`, `read_idx`, `read_csv`, `read_image_folder`) return a
    `LabelledImages`: uint8 images, int64 labels and class names;
  * `split_per_class` and `halve_per_class` make seeded per-class splits that
    are disjoint by construction;
  * `build_scenario` assembles one benchmark scenario (`SCENARIOS`) into a
    directory with a `scenario.json` that names every file pattern.

Every random choice derives from the split seed, so a scenario directory is a
pure function of (scenario, split seed, parameters, input files).
"""

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import shutil
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from l2tl_tf import files, records

# Bump when what a scenario holds changes, so stale builds are rebuilt.
BUILD_VERSION = 1
SCENARIO_FILE = 'scenario.json'
IMAGE_SIZE = 28
NUM_CHANNELS = 1

FASHION_MNIST_CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                             'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
FASHION_FILES = {'fashion_train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                 'fashion_test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
DEFAULT_FASHION_DIR = '/usr/share/datasets/fashion-mnist'
PLANTED_PREFIX = 'planted '


@dataclasses.dataclass(frozen=True)
class LabelledImages:
  """A labelled image set held in memory.

  Attributes:
    images: uint8 [N, H, W] or [N, H, W, C].
    labels: int64 [N], ids into `class_names`.
    class_names: one name per class id.
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __post_init__(self):
    if self.images.dtype != np.uint8:
      raise ValueError(f'Images must be uint8, not {self.images.dtype}.')
    if len(self.images) != len(self.labels):
      raise ValueError(f'{len(self.images)} images but {len(self.labels)} labels.')
    if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
      raise ValueError(f'Labels span [{self.labels.min()}, {self.labels.max()}] but there are '
                       f'{len(self.class_names)} class names.')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def subset(self, positions: np.ndarray) -> 'LabelledImages':
    return LabelledImages(self.images[positions], self.labels[positions], self.class_names)


def labelled(images, labels, class_names: Optional[Sequence[str]] = None) -> LabelledImages:
  """A `LabelledImages`, naming classes by their ids when no names are given.

  Raises:
    ValueError: for labels that are not whole numbers >= 0 (a float 1.7 was
      cut to 1), fewer or more labels than images, or labels past the names.
  """
  raw = np.asarray(labels)
  if raw.size and (not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)) or raw.min() < 0):
    bad = raw[~np.isfinite(raw) | (raw != np.round(raw)) | (raw < 0)][:5]
    raise ValueError(f'Labels must be whole numbers >= 0; found {bad.tolist()}.')
  labels = raw.astype(np.int64)
  if len(labels) != len(images):
    raise ValueError(f'{len(images)} images but {len(labels)} labels.')
  if class_names is not None and len(labels) and labels.max() >= len(class_names):
    raise ValueError(f'Label {int(labels.max())} has no name: {len(class_names)} class names '
                     'were given.')
  if class_names is None:
    class_names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
  return LabelledImages(np.asarray(images), labels, tuple(str(n) for n in class_names))


def _to_uint8(values: np.ndarray, what: str) -> np.ndarray:
  """Pixels as uint8; values all within [0, 1] are read as fractions of 255."""
  if values.dtype == np.uint8:
    return values
  values = np.asarray(values, np.float64)
  if values.size and values.max() <= 1.0:
    values = values * 255.0
  if values.size and (values.min() < 0 or values.max() > 255):
    raise ValueError(f'{what}: pixel values span [{values.min()}, {values.max()}], '
                     'not 0..255 (or 0..1).')
  return np.round(values).astype(np.uint8)


# ---------------------------------------------------------------- readers

def read_npz(path: str, image_key: str = 'x', label_key: str = 'y',
             names_key: Optional[str] = 'class_names') -> LabelledImages:
  """Reads images, labels and (when stored) class names from a .npz file.

  Args:
    path: the .npz file (no pickles are loaded).
    image_key: array of images [N, H, W] or [N, H, W, C].
    label_key: array of N integer labels.
    names_key: array of class names; when absent classes are named by id.
  """
  with np.load(path, allow_pickle=False) as data:
    for key in (image_key, label_key):
      if key not in data.files:
        raise KeyError(f'{path} has no array {key!r} (it has {data.files}).')
    names = data[names_key].tolist() if names_key and names_key in data.files else None
    return labelled(_to_uint8(data[image_key], path), data[label_key], names)


_IDX_TYPES = {0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
              0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def _open(path: str):
  """Opens a file for binary reading, gunzipping when it is gzip-compressed."""
  with open(path, 'rb') as f:
    magic = f.read(2)
  return gzip.open(path, 'rb') if magic == b'\x1f\x8b' else open(path, 'rb')


def read_idx_array(path: str) -> np.ndarray:
  """Reads one IDX file (the MNIST format), gzipped or plain.

  An IDX file is two zero bytes, a type code, the number of dimensions, one
  big-endian uint32 per dimension, then the values in C order.
  """
  with _open(path) as f:
    content = f.read()
  if len(content) < 4 or content[:2] != b'\x00\x00' or content[2] not in _IDX_TYPES:
    raise ValueError(f'{path} is not an IDX file (bad magic number {content[:4]!r}).')
  dtype, ndim = _IDX_TYPES[content[2]], content[3]
  shape = tuple(int(d) for d in np.frombuffer(content, '>u4', count=ndim, offset=4))
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(content) - offset != expected:
    raise ValueError(f'{path}: header says shape {shape} ({expected} bytes) but '
                     f'{len(content) - offset} bytes follow.')
  return np.frombuffer(content, dtype, offset=offset).reshape(shape)


def read_idx(images_path: str, labels_path: str,
             class_names: Optional[Sequence[str]] = None) -> LabelledImages:
  """Reads an IDX image file and its IDX label file (MNIST, Fashion-MNIST)."""
  images = _to_uint8(read_idx_array(images_path), images_path)
  labels = read_idx_array(labels_path)
  if labels.ndim != 1:
    raise ValueError(f'{labels_path} holds shape {labels.shape}, not a vector of labels.')
  return labelled(images, labels, class_names)


def _has_header(path: str) -> bool:
  with _open(path) as f:
    first = f.readline().decode('utf-8', 'replace').strip().split(',')
  try:
    [float(field) for field in first]
  except ValueError:
    return True
  return False


def read_csv(path: str, label_column: int = -1,
             image_shape: Sequence[int] = (IMAGE_SIZE, IMAGE_SIZE),
             class_names: Optional[Sequence[str]] = None) -> LabelledImages:
  """Reads an MNIST-style CSV: one image per row, pixels plus a label column.

  A non-numeric first row is taken for a header and skipped. Pixels are 0..255,
  or 0..1 (scaled to 0..255).

  Args:
    path: the CSV file, gzipped or plain.
    label_column: column of the label (negative counts from the end).
    image_shape: shape of one image, e.g. (28, 28) or (32, 32, 3).
    class_names: names of the classes; by default their ids.
  """
  with _open(path) as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.float64, ndmin=2,
                       skiprows=1 if _has_header(path) else 0)
  pixels_per_image = int(np.prod(image_shape))
  if table.shape[1] != pixels_per_image + 1:
    raise ValueError(f'{path} has {table.shape[1]} columns, not {pixels_per_image} pixels of '
                     f'an image of shape {tuple(image_shape)} + 1 label: pass --image_shape.')
  labels = table[:, label_column]
  if np.any(labels != np.round(labels)):
    raise ValueError(f'{path}: column {label_column} holds non-integer labels.')
  pixels = np.delete(table, label_column % table.shape[1], axis=1)
  images = _to_uint8(pixels, path).reshape((-1,) + tuple(image_shape))
  return labelled(images, labels, class_names)


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')


def read_image_folder(root: str, image_size: Optional[int] = None,
                      channels: Optional[int] = None,
                      class_names: Optional[Sequence[str]] = None) -> LabelledImages:
  """Reads `root/<class name>/<image file>`: one sub-folder per class.

  Without `class_names`, classes are the sub-folders in sorted order (hidden
  folders such as `.ipynb_checkpoints` are skipped). With them, each folder
  takes the id of its name in that list: pass the training set's
  class_names.txt when converting its validation or test folder, so that a
  class missing from one set shifts no other class's id. Images are read one
  at a time (one open file, one full-size image in memory) and stacked, so
  they must share a size unless `image_size` resizes them all. 16-bit
  grayscale is scaled to 8 bits, not clipped.

  Args:
    root: the folder of class folders.
    image_size: resize every image to image_size x image_size (bilinear).
    channels: 1 (grayscale) or 3 (RGB); by default 1 when every image is
      grayscale, else 3.
    class_names: the label space to store ids in (see above).

  Raises:
    ImportError: without Pillow.
    ValueError: for an empty folder, a folder not in `class_names`, an
      unknown channel count or images of different sizes without
      `image_size`.
  """
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError('read_image_folder needs Pillow: pip install pillow.') from error
  folders = sorted(d for d in os.listdir(root)
                   if not d.startswith('.') and os.path.isdir(os.path.join(root, d)))
  names = list(class_names) if class_names is not None else folders
  ids = {name: i for i, name in enumerate(names)}
  unknown = [folder for folder in folders if folder not in ids]
  if unknown:
    raise ValueError(f'{root} has class folders {unknown[:5]} that are not in the '
                     f'{len(names)} given class names: is it the same label space?')
  paths, labels = [], []
  for folder in folders:
    for file in sorted(os.listdir(os.path.join(root, folder))):
      if file.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(root, folder, file))
        labels.append(ids[folder])
  if not paths:
    raise ValueError(f'{root} has no class folders holding {"/".join(IMAGE_EXTENSIONS)} images.')
  if channels is None:
    channels = 1 if all(_image_mode(Image, path) in GRAYSCALE_MODES for path in paths) else 3
  if channels not in (1, 3):
    raise ValueError(f'channels={channels}: only 1 (grayscale) and 3 (RGB) are supported.')
  images = [_read_image(Image, path, channels, image_size) for path in paths]
  sizes = sorted({image.shape[:2] for image in images})
  if len(sizes) > 1:
    raise ValueError(f'{root} holds images of sizes {sizes[:5]}: pass an image size to '
                     'resize them to one size.')
  return labelled(np.stack(images), labels, names)


GRAYSCALE_MODES = ('1', 'L', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


def _image_mode(image_module, path: str) -> str:
  """The file's Pillow mode, from its header only."""
  with image_module.open(path) as image:
    return image.mode


def _read_image(image_module, path: str, channels: int, image_size: Optional[int]) -> np.ndarray:
  """One image as uint8 [H, W] or [H, W, 3], resized when asked; the file is closed after."""
  with image_module.open(path) as image:
    if image.mode.startswith('I'):
      # 16-bit grayscale ('I;16*', or 'I' holding values above 255): its top 8
      # bits, where convert('L') would clip everything above 255 to white.
      values = np.asarray(image).astype(np.int64)
      if image.mode != 'I' or values.max() > 255:
        values = values >> 8
      image = image_module.fromarray(values.clip(0, 255).astype(np.uint8), 'L')
    image = image.convert('L' if channels == 1 else 'RGB')
    if image_size:
      image = image.resize((image_size, image_size), image_module.Resampling.BILINEAR)
    return np.asarray(image).copy()


# ---------------------------------------------------------------- writing

def write_dataset(prefix: str, images: np.ndarray, labels: Sequence[int],
                  class_names: Sequence[str], num_shards: int = 1) -> str:
  """Writes sharded TFRecords and `class_names.txt`; returns the file pattern."""
  if num_shards < 1:
    raise ValueError(f'num_shards={num_shards} must be positive.')
  return records.write_image_records(prefix, images, labels, num_shards=num_shards,
                                     class_names=list(class_names))


def write_labelled(prefix: str, data: LabelledImages, num_shards: int = 1) -> str:
  return write_dataset(prefix, data.images, data.labels, data.class_names, num_shards)


# ---------------------------------------------------------------- splits

@dataclasses.dataclass(frozen=True)
class Split:
  """Disjoint positions into one labelled set, each part in a seeded order."""
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray


def _class_members(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
  """Each class's positions in a seeded random order, classes in id order."""
  return [rng.permutation(np.flatnonzero(labels == cls)) for cls in np.unique(labels)]


def split_per_class(labels: Sequence[int], val_per_class: int,
                    test_per_class: Optional[int] = None, seed: int = 0,
                    train_per_class: Optional[int] = None) -> Split:
  """Seeded per-class split into a training pool, a validation set and a test set.

  Each class's positions are shuffled once and cut in the order validation,
  training pool, test, so the three parts never share a position. The pool is
  what the trainer draws its k examples per class from (`--examples_per_class`);
  the validation set is the reward set D'_T.

  Args:
    labels: N integer labels.
    val_per_class: validation examples per class.
    test_per_class: test examples per class; None: all not taken by the other
      two (then `train_per_class` must be given).
    seed: the split seed.
    train_per_class: training-pool examples per class; None: all not taken by
      the other two.

  Returns:
    A `Split` of positions, each part in a seeded order that mixes classes.

  Raises:
    ValueError: when both open-ended counts are None, or a class is too small.
  """
  if train_per_class is None and test_per_class is None:
    raise ValueError('Give train_per_class or test_per_class (or both): the other part '
                     'takes the rest.')
  counts = [c for c in (val_per_class, train_per_class, test_per_class) if c is not None]
  if min(counts) < 0:
    raise ValueError(f'Negative count among {counts}.')
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed, 0x5B117])
  parts = {'train': [], 'val': [], 'test': []}
  for members in _class_members(labels, rng):
    fixed = sum(counts)
    if len(members) < fixed:
      raise ValueError(f'Class {labels[members[0]]} has {len(members)} examples, fewer than '
                       f'{val_per_class} validation + {train_per_class or 0} training + '
                       f'{test_per_class or 0} test.')
    val, rest = members[:val_per_class], members[val_per_class:]
    if train_per_class is None:
      train, test = rest[test_per_class:], rest[:test_per_class]
    else:
      train, test = rest[:train_per_class], rest[train_per_class:]
      test = test if test_per_class is None else test[:test_per_class]
    for part, positions in (('train', train), ('val', val), ('test', test)):
      parts[part].append(positions)
  return Split(**{part: rng.permutation(np.concatenate(positions)).astype(np.int64)
                  if positions else np.zeros([0], np.int64)
                  for part, positions in parts.items()})


def halve_per_class(labels: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded half of each class and the other half (the first gets floor(n/2)).

  Planted scenarios move the first half into the source and build the target
  from the second, so no image is in both.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed, 0x4A1F])
  first, second = [], []
  for members in _class_members(labels, rng):
    first.append(members[:len(members) // 2])
    second.append(members[len(members) // 2:])
  return (rng.permutation(np.concatenate(first)).astype(np.int64),
          rng.permutation(np.concatenate(second)).astype(np.int64))


def concatenate(parts: Sequence[tuple[LabelledImages, str]]) -> LabelledImages:
  """Stacks labelled sets into one label space, in order, prefixing class names.

  Args:
    parts: (set, prefix for its class names) pairs; the first set keeps ids
      0..C_1-1, the next follows, and so on.

  Raises:
    ValueError: when two classes end up with one name (rankings would be
      ambiguous) or the images differ in shape.
  """
  images, labels, names = [], [], []
  for data, prefix in parts:
    labels.append(data.labels + len(names))
    images.append(data.images)
    names += [prefix + name for name in data.class_names]
  unique, counts = np.unique(np.array(names, dtype=object), return_counts=True)
  duplicates = unique[counts > 1].tolist()
  if duplicates:
    raise ValueError(f'Class names collide across the joined sets: {duplicates[:10]}.')
  if len({image.shape[1:] for image in images}) > 1:
    raise ValueError(f'Joined sets differ in image shape: {[i.shape[1:] for i in images]}.')
  return LabelledImages(np.concatenate(images), np.concatenate(labels), tuple(names))


# ---------------------------------------------------------------- raw inputs

class RawData:
  """The named raw sets a scenario is built from.

  Names: 'glyphs', 'mnist', 'fashion_train', 'fashion_test'. `identity`
  enters the build parameters, so a changed input rebuilds the scenarios.
  """

  def load(self, name: str) -> LabelledImages:
    raise NotImplementedError

  def identity(self, name: str) -> object:
    raise NotImplementedError

  def check(self, names: Sequence[str]) -> None:
    """Raises FileNotFoundError naming the fix when a needed input is missing."""


class RawArrays(RawData):
  """Raw sets given in memory (tests, notebooks); identified by a content hash."""

  def __init__(self, sets: Mapping[str, LabelledImages]):
    self._sets = dict(sets)

  def load(self, name: str) -> LabelledImages:
    if name not in self._sets:
      raise KeyError(f'No raw set {name!r}: have {sorted(self._sets)}.')
    return self._sets[name]

  def identity(self, name: str) -> object:
    data = self.load(name)
    digest = hashlib.sha256(data.images.tobytes())
    digest.update(data.labels.tobytes())
    digest.update('\n'.join(data.class_names).encode('utf-8'))
    return digest.hexdigest()


class RawFiles(RawData):
  """Raw sets read from the offline files of `../shared/bench-data/README.md`."""

  def __init__(self, glyphs: str, mnist: str, fashion_dir: str = DEFAULT_FASHION_DIR):
    self.paths = {'glyphs': (glyphs,), 'mnist': (mnist,)}
    for name, files in FASHION_FILES.items():
      self.paths[name] = tuple(os.path.join(fashion_dir, file) for file in files)
    self._cache = {}

  _FIXES = {
      'glyphs': 'it ships in the shared bench data (../shared/bench-data/glyphs.npz); '
                'pass --glyphs=PATH',
      'mnist': 'it ships in the shared bench data (../shared/bench-data/mnist5k.npz); '
               'pass --mnist=PATH',
      'fashion_train': 'install it with `apt-get install dataset-fashion-mnist` or pass '
                       '--fashion_dir=DIR',
      'fashion_test': 'install it with `apt-get install dataset-fashion-mnist` or pass '
                      '--fashion_dir=DIR',
  }

  def check(self, names: Sequence[str]) -> None:
    for name in names:
      for path in self.paths[name]:
        if not os.path.exists(path):
          raise FileNotFoundError(f'{path} ({name}) not found: {self._FIXES[name]}.')

  def load(self, name: str) -> LabelledImages:
    self.check([name])
    if name not in self._cache:
      if name in FASHION_FILES:
        self._cache[name] = read_idx(*self.paths[name], class_names=FASHION_MNIST_CLASS_NAMES)
      else:
        self._cache[name] = read_npz(self.paths[name][0])
    return self._cache[name]

  def identity(self, name: str) -> object:
    self.check([name])
    return [[os.path.abspath(path), os.path.getsize(path)] for path in self.paths[name]]


# ---------------------------------------------------------------- scenarios

@dataclasses.dataclass(frozen=True)
class ScenarioSpec:
  """What one scenario takes from which raw set.

  Attributes:
    target_train: raw set the target's training pool and validation set come
      from (and the test set, when `target_test` is empty).
    target_test: raw set used whole as the target test set, or ''.
    source: (raw set, class-name prefix) pairs forming the natural source.
    planted: add ten source classes made of a seeded half of `target_train`;
      the target is then built from the other half.
    heldout: leave the planted classes out of the pretraining source.
  """
  target_train: str
  target_test: str
  source: tuple[tuple[str, str], ...]
  planted: bool = False
  heldout: bool = False

  def raw_sets(self) -> list[str]:
    names = [name for name, _ in self.source] + [self.target_train, self.target_test]
    return [name for name in dict.fromkeys(names) if name]


_DIGITS = dict(target_train='mnist', target_test='',
               source=(('glyphs', ''), ('fashion_train', '')))
_FASHION = dict(target_train='fashion_train', target_test='fashion_test',
                source=(('glyphs', ''), ('mnist', 'digit ')))
SCENARIOS = {
    'digits': ScenarioSpec(**_DIGITS),
    'digits-planted': ScenarioSpec(**_DIGITS, planted=True),
    'digits-planted-heldout': ScenarioSpec(**_DIGITS, planted=True, heldout=True),
    'fashion': ScenarioSpec(**_FASHION),
    'fashion-planted': ScenarioSpec(**_FASHION, planted=True),
    'fashion-planted-heldout': ScenarioSpec(**_FASHION, planted=True, heldout=True),
}


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """Sizes and shard counts shared by every scenario.

  Attributes:
    pool_per_class: target training-pool examples per class (the trainer picks
      k <= this per class from it, seeded by the run's seed).
    val_per_class: target validation (reward) examples per class.
    max_source_per_class: cap on examples per natural source class (0: keep
      all); the cap is a seeded choice.
    max_planted_per_class: cap on examples per planted class (0: the whole
      half, e.g. 3,000 per Fashion-MNIST class); images cut by the cap are
      dropped, never moved to the target.
    source_shards: shards of the source, pretrain and oracle datasets.
    target_shards: shards of each target split.
  """
  pool_per_class: int = 100
  val_per_class: int = 50
  max_source_per_class: int = 0
  max_planted_per_class: int = 0
  source_shards: int = 8
  target_shards: int = 1


def scenario_dir(out_dir: str, name: str, split_seed: int) -> str:
  return os.path.join(out_dir, name, f'split{split_seed}')


def _pattern(relative_prefix: str, num_shards: int) -> str:
  return f'{relative_prefix}-*-of-{num_shards:05d}'


def cap_per_class(data: LabelledImages, cap: int, seed: int) -> LabelledImages:
  """At most `cap` seeded examples of each class (all when cap is 0)."""
  if not cap:
    return data
  rng = np.random.default_rng([seed, 0xCA9])
  kept = np.concatenate([members[:cap] for members in _class_members(data.labels, rng)])
  return data.subset(np.sort(kept))


@dataclasses.dataclass(frozen=True)
class AssembledScenario:
  """A scenario's datasets in memory, before writing."""
  source: LabelledImages
  pretrain: Optional[LabelledImages]  # None: pretraining reads the source.
  oracle: Optional[LabelledImages]
  target: dict  # split -> LabelledImages
  planted_ids: list[int]
  natural_classes: int


def _shuffled(data: LabelledImages, seed: int, stream: int) -> LabelledImages:
  """The set in a seeded order, so every shard and file prefix mixes classes."""
  return data.subset(np.random.default_rng([seed, stream]).permutation(len(data.labels)))


def assemble_scenario(spec: ScenarioSpec, raw: RawData, split_seed: int,
                      options: BuildOptions = BuildOptions()) -> AssembledScenario:
  """Builds a scenario's source, pretrain, oracle and target sets in memory."""
  natural = concatenate([(cap_per_class(raw.load(name), options.max_source_per_class,
                                        split_seed), prefix)
                         for name, prefix in spec.source])
  target_pool = raw.load(spec.target_train)
  source, planted_ids, oracle, pretrain = natural, [], None, None
  if spec.planted:
    planted_positions, target_positions = halve_per_class(target_pool.labels, split_seed)
    planted = cap_per_class(target_pool.subset(planted_positions),
                            options.max_planted_per_class, split_seed)
    target_pool = target_pool.subset(target_positions)
    source = concatenate([(natural, ''), (planted, PLANTED_PREFIX)])
    planted_ids = list(range(natural.num_classes, source.num_classes))
    is_planted = source.labels >= natural.num_classes
    oracle = source.subset(np.flatnonzero(is_planted))
    if spec.heldout:
      pretrain = source.subset(np.flatnonzero(~is_planted))
  split = split_per_class(target_pool.labels, options.val_per_class,
                          test_per_class=None if not spec.target_test else 0,
                          seed=split_seed, train_per_class=options.pool_per_class)
  target = {'train': target_pool.subset(split.train), 'val': target_pool.subset(split.val)}
  if spec.target_test:
    test = raw.load(spec.target_test)
    if test.class_names != target_pool.class_names:
      raise ValueError(f'{spec.target_test} and {spec.target_train} name their classes '
                       'differently.')
    target['test'] = _shuffled(test, split_seed, 5)
  else:
    target['test'] = target_pool.subset(split.test)
  return AssembledScenario(
      source=_shuffled(source, split_seed, 1),
      pretrain=_shuffled(pretrain, split_seed, 2) if pretrain is not None else None,
      oracle=_shuffled(oracle, split_seed, 3) if oracle is not None else None,
      target=target, planted_ids=planted_ids, natural_classes=natural.num_classes)


def _build_params(name: str, spec: ScenarioSpec, raw: RawData, split_seed: int,
                  options: BuildOptions) -> dict:
  return {'version': BUILD_VERSION, 'name': name, 'split_seed': split_seed,
          'spec': dataclasses.asdict(spec), 'options': dataclasses.asdict(options),
          'inputs': {set_name: raw.identity(set_name) for set_name in spec.raw_sets()}}


def _json_round_trip(value):
  return json.loads(json.dumps(value))


def read_scenario(directory: str) -> dict:
  """A scenario's description with its file patterns made absolute.

  `scenario.json` stores patterns relative to its own directory so a built
  tree can move; this resolves them against where it is now.
  """
  with open(os.path.join(directory, SCENARIO_FILE), encoding='utf-8') as f:
    scenario = json.load(f)
  root = os.path.abspath(directory)
  for dataset in scenario['datasets'].values():
    for key in ('pattern', 'class_names_file'):
      dataset[key] = os.path.join(root, dataset[key])
  return scenario


def _complete(directory: str, scenario: dict) -> bool:
  """Whether every dataset `scenario` names has all its shards on disk."""
  for dataset in scenario['datasets'].values():
    if len(glob.glob(os.path.join(directory, dataset['pattern']))) != dataset['num_shards']:
      return False
  return True


def _existing(directory: str, params: dict) -> Optional[dict]:
  try:
    with open(os.path.join(directory, SCENARIO_FILE), encoding='utf-8') as f:
      scenario = json.load(f)
  except (OSError, ValueError):
    return None
  if scenario.get('params') != _json_round_trip(params) or not _complete(directory, scenario):
    return None
  return scenario


def _dataset_entry(relative_prefix: str, data: LabelledImages, num_shards: int) -> dict:
  return {'pattern': _pattern(relative_prefix, num_shards), 'num_shards': num_shards,
          'num_examples': int(len(data.labels)), 'num_classes': data.num_classes,
          'classes_present': int(len(np.unique(data.labels))),
          'class_names_file': os.path.join(os.path.dirname(relative_prefix),
                                           records.CLASS_NAMES_FILE)}


def _write_assembled(directory: str, built: AssembledScenario, options: BuildOptions) -> dict:
  """Writes every dataset of a scenario; returns the `datasets` entries."""
  jobs = {'source': ('source', 'train', built.source, options.source_shards)}
  if built.pretrain is not None:
    jobs['pretrain'] = ('pretrain', 'train', built.pretrain, options.source_shards)
  if built.oracle is not None:
    jobs['oracle'] = ('oracle', 'train', built.oracle, options.source_shards)
  for split, data in built.target.items():
    jobs[f'target_{split}'] = ('target', split, data, options.target_shards)
  datasets = {}
  for key, (part, split, data, num_shards) in jobs.items():
    relative = os.path.join(part, split)
    write_labelled(os.path.join(directory, relative), data, num_shards)
    datasets[key] = _dataset_entry(relative, data, num_shards)
  if 'pretrain' not in datasets:
    datasets['pretrain'] = datasets['source']
  return datasets


OWNED_SUBDIRS = ('source', 'pretrain', 'oracle', 'target')


def build_scenario(name: str, out_dir: str, split_seed: int, raw: RawData,
                   options: BuildOptions = BuildOptions(),
                   log: Callable[[str], None] = print) -> dict:
  """Builds (or reuses) one scenario in `out_dir/<name>/split<split_seed>/`.

  Writes `source/train-*` (what L2TL, uniform, random and DATL weight),
  `pretrain/train-*` only when pretraining must not see the planted classes
  (otherwise the `pretrain` entry points at the source),
  `oracle/train-*` (the planted classes alone) for planted scenarios, and
  `target/{train,val,test}-*`, each directory with its `class_names.txt`,
  then `scenario.json` last: its presence marks a complete build. All source
  datasets share one label space (natural classes, then the planted ones), so
  a model pretrained on `pretrain` has the source head `source` needs.

  Args:
    name: a key of `SCENARIOS`.
    out_dir: root of all scenarios.
    split_seed: seeds the planted halves, the target split, caps and orders.
    raw: where the raw sets come from (`RawFiles` or `RawArrays`).
    options: sizes and shard counts.
    log: receives one line per build or reuse.

  Returns:
    The scenario description as written to `scenario.json` (patterns relative
    to the scenario directory; `read_scenario` resolves them).
  """
  if name not in SCENARIOS:
    raise ValueError(f'Unknown scenario {name!r}: pick one of {sorted(SCENARIOS)}.')
  spec = SCENARIOS[name]
  raw.check(spec.raw_sets())
  directory = scenario_dir(out_dir, name, split_seed)
  params = _build_params(name, spec, raw, split_seed, options)
  existing = _existing(directory, params)
  if existing:
    log(f'Reusing {directory}: {SCENARIO_FILE} matches.')
    return existing
  started = time.time()
  _clear(directory)
  built = assemble_scenario(spec, raw, split_seed, options)
  datasets = _write_assembled(directory, built, options)
  scenario = _describe(name, split_seed, params, built, datasets)
  _write_json(os.path.join(directory, SCENARIO_FILE), scenario)
  log(f'Built {directory} in {time.time() - started:.1f}s: source '
      f'{datasets["source"]["num_examples"]} images / {built.source.num_classes} classes, '
      f'target train pool {datasets["target_train"]["num_examples"]}, val '
      f'{datasets["target_val"]["num_examples"]}, test {datasets["target_test"]["num_examples"]}.')
  return scenario


def _clear(directory: str):
  """Removes a stale build's marker and datasets (only what builds write)."""
  marker = os.path.join(directory, SCENARIO_FILE)
  if os.path.exists(marker):
    os.remove(marker)
  for part in OWNED_SUBDIRS:
    shutil.rmtree(os.path.join(directory, part), ignore_errors=True)
  os.makedirs(directory, exist_ok=True)


def _describe(name: str, split_seed: int, params: dict, built: AssembledScenario,
              datasets: dict) -> dict:
  source_names = list(built.source.class_names)
  return {
      'name': name, 'split_seed': split_seed, 'image_size': IMAGE_SIZE,
      'channels': NUM_CHANNELS,
      'source_num_classes': built.source.num_classes,
      'natural_source_classes': built.natural_classes,
      'planted_class_ids': built.planted_ids,
      'planted_class_names': [source_names[i] for i in built.planted_ids],
      'target_num_classes': built.target['train'].num_classes,
      'target_class_names': list(built.target['train'].class_names),
      'datasets': datasets, 'params': _json_round_trip(params),
  }


def _write_json(path: str, value: dict):
  files.write_text_atomically(path, json.dumps(value, ensure_ascii=False, indent=1))
