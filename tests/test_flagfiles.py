"""Every flagfile under flags/ parses with the train binary's flags and validates.

No training and no data: each file is read by absl exactly as
`python -m l2tl_tf.train --flagfile=FILE` reads it, turned into a `Config` and
checked with `config.validate`. Files under flags/paper/ and flags/pretrain/
are also held to the paper's Appendix A settings.
"""

import math
import pathlib
import re
import shlex

from absl import flags
import pytest

from l2tl_tf import config as config_lib
from l2tl_tf import flag_defs
from l2tl_tf import input_pipeline
from l2tl_tf import train  # pylint: disable=unused-import  (defines the binary's flags)
from l2tl_tf.config import Mode

FLAGS = flags.FLAGS
FLAGS_DIR = pathlib.Path(__file__).resolve().parents[1] / 'flags'
# flags/demo/ holds flagfiles of the demo binary, checked in test_demo.py.
ALL_FLAGFILES = sorted(p for p in FLAGS_DIR.rglob('*.flags') if p.parent.name != 'demo')
PAPER_FLAGFILES = sorted((FLAGS_DIR / 'paper').glob('*.flags'))
PRETRAIN_FLAGFILES = sorted((FLAGS_DIR / 'pretrain').glob('*.flags'))

# The flag names other code and the benchmarks pass to `l2tl_tf.train`.
CONTRACT_FLAGS = (
    'mode', 'model_dir', 'source_train', 'target_train', 'target_val', 'target_test',
    'source_num_classes', 'target_num_classes', 'image_size', 'backbone', 'train_steps',
    'batch_size', 'warm_start_from', 'examples_per_class', 'seed')

# Table 1 (and Sec. 5.2) class counts, keyed by the dataset token in file names.
TARGET_CLASSES = {'birdsnap': 500, 'pets': 37, 'cars': 196, 'aircraft': 100, 'food': 101,
                  'dtd': 47, 'chexpert': 5}
# A line that is not blank or a comment must be exactly one `--name=value`
# (or a bare boolean `--name` / `--noname`): absl would otherwise keep a
# trailing "# comment" as part of a string value, or treat a stray word as a
# positional argument.
FLAG_LINE = re.compile(r'^--[a-z][a-z0-9_]*(=\S*)?$')


def _ids(paths):
  return [str(p.relative_to(FLAGS_DIR)) for p in paths]


@pytest.fixture
def parse():
  """Parses argv into the global FLAGS; restores the defaults afterwards."""
  FLAGS.unparse_flags()

  def _parse(*args):
    remaining = FLAGS(['l2tl_train', *args])
    assert remaining == ['l2tl_train'], f'Unexpected positional arguments: {remaining[1:]}'
    return flag_defs.config_from_flags()

  yield _parse
  FLAGS.unparse_flags()


def _load(parse, path: pathlib.Path) -> config_lib.Config:
  return parse(f'--flagfile={path}')


def _set_flags(path: pathlib.Path) -> set[str]:
  """Names of the flags a file sets explicitly."""
  names = set()
  for line in path.read_text().splitlines():
    line = line.strip()
    if line.startswith('--'):
      names.add(line[2:].split('=', 1)[0])
  return names


def test_there_are_flagfiles():
  assert PAPER_FLAGFILES and PRETRAIN_FLAGFILES


def test_contract_flags_are_defined_by_the_train_binary():
  missing = [name for name in CONTRACT_FLAGS if name not in FLAGS]
  assert not missing, f'train binary lacks contract flags: {missing}'


@pytest.mark.parametrize('path', ALL_FLAGFILES, ids=_ids(ALL_FLAGFILES))
def test_flagfile_lines_are_one_flag_or_a_comment(path):
  for number, line in enumerate(path.read_text().splitlines(), 1):
    stripped = line.strip()
    if not stripped or stripped.startswith('#'):
      continue
    assert FLAG_LINE.match(stripped), f'{path.name}:{number}: not a single --flag=value: {line!r}'


@pytest.mark.parametrize('path', ALL_FLAGFILES, ids=_ids(ALL_FLAGFILES))
def test_flagfile_parses_and_validates(parse, path):
  config = _load(parse, path)
  config_lib.validate(config)
  for spec in (config.data.source_train, config.data.target_train, config.data.target_val,
               config.data.target_test):
    if spec:
      input_pipeline.parse_spec(spec)
  # Each flag is set at most once: a repeated flag silently keeps the last value.
  lines = [l.strip() for l in path.read_text().splitlines() if l.strip().startswith('--')]
  names = [l[2:].split('=', 1)[0] for l in lines]
  assert len(names) == len(set(names)), f'{path.name} sets a flag twice: {names}'


def test_unknown_flag_in_a_flagfile_is_rejected(parse, tmp_path):
  good = PAPER_FLAGFILES[0].read_text()
  typo = tmp_path / 'typo.flags'
  typo.write_text(good + '--lerning_rate=0.1\n')
  with pytest.raises(flags.UnrecognizedFlagError):
    _load(parse, typo)


def test_bad_value_in_a_flagfile_is_rejected(parse, tmp_path):
  bad = tmp_path / 'bad.flags'
  bad.write_text('--mode=l2tl\n--batch_size=two_hundred\n')
  with pytest.raises(flags.IllegalFlagValueError):
    _load(parse, bad)


def test_command_line_after_flagfile_overrides_it(parse):
  path = FLAGS_DIR / 'paper' / 'table2_pets_l2tl.flags'
  config = parse(f'--flagfile={path}', '--seed=2', '--model_dir=/tmp/elsewhere')
  assert (config.seed, config.model_dir) == (2, '/tmp/elsewhere')
  assert config.data.target_num_classes == 37


def _mode_from_name(path: pathlib.Path) -> str:
  return path.stem.rsplit('_', 1)[1]


@pytest.mark.parametrize('path', PAPER_FLAGFILES, ids=_ids(PAPER_FLAGFILES))
def test_paper_flagfile_follows_appendix_a(parse, path):
  config = _load(parse, path)
  explicit = _set_flags(path)
  assert config.mode.value == _mode_from_name(path), 'file name must end in _<mode>'
  assert config.mode is not Mode.PRETRAIN

  # Header: says which table/figure row it reproduces and the paper's number.
  text = path.read_text()
  assert text.startswith('#')
  header = text.split('\n--', 1)[0]
  table = re.match(r'(table|fig)(\d+)_', path.stem)
  assert table, 'paper flagfiles are named tableN_... or figN_...'
  word = 'Table' if table.group(1) == 'table' else 'Fig.'
  assert f'{word} {table.group(2)}' in header
  assert re.search(r'\d+\.\d', header), 'header must quote the paper number'
  assert 'choice' in header.lower(), 'header must say which values are our choices'

  # Appendix A, for every run.
  for name in ('batch_size', 'train_steps', 'momentum', 'warmup_steps', 'learning_rate',
               'weight_decay', 'backbone', 'image_size', 'mode', 'model_dir', 'seed'):
    assert name in explicit, f'{path.name} must set --{name} explicitly'
  assert config.batch_size == 256
  assert config.train_steps == 20_000
  assert config.optimizer.momentum == 0.9
  assert not config.optimizer.nesterov
  assert config.optimizer.warmup_steps == 2_000
  assert config.source_batch_multiplier == 5
  assert config.reward_batch_ratio == 4 and config.reward_batch_size == 1024
  assert config.policy.num_alpha_levels == 100
  assert config.policy.alpha_beta == 0.5
  assert config.policy.baseline_decay == 0.05
  assert math.isclose(config.policy.learning_rate, 1e-4)
  assert config.policy.level_values == 'paper' and config.policy.baseline_style == 'paper'

  # B_S: 256 for ImageNet, 1,024 for JFT-300M.
  jft = '_jft_' in path.stem
  if config.mode.uses_source:
    assert config.source_batch_size == (1024 if jft else 256)
    assert config.data.source_num_classes == (18_291 if jft else 1000)
    assert config.data.source_label_offset == (0 if jft else 1)
  if config.mode.uses_policy:
    for name in ('source_batch_ratio', 'reward_batch_ratio', 'source_batch_multiplier',
                 'num_alpha_levels', 'alpha_beta', 'baseline_decay', 'policy_learning_rate',
                 'num_lambda_levels', 'reward_metric'):
      assert name in explicit, f'{path.name} must set --{name} explicitly'

  # Encoder: Inception-V3 at 299, DenseNet-121 at 224 for CheXpert.
  chexpert = 'chexpert' in path.stem
  assert (config.model.backbone, config.data.image_size) == (
      ('densenet121', 224) if chexpert else ('inception_v3', 299))
  assert config.policy.reward_metric == ('auc' if chexpert else 'accuracy')
  # CheXpert's five observations are multi-label (sigmoid head, AUC); the rest single-label.
  assert config.data.target_multi_label == chexpert
  if chexpert:
    assert config.optimizer.learning_rate in (0.5, 0.8, 1.0, 1.3, 1.5, 2.0)
    assert config.optimizer.weight_decay in (0.0, 1e-4)
  else:
    assert config.optimizer.learning_rate in (0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.4)
    assert config.optimizer.weight_decay in (0.0, 4e-5)

  # Warm start from the matching pretrain run, except when training from scratch.
  if config.mode is Mode.SCRATCH:
    assert not config.warm_start_from
  else:
    assert config.warm_start_from

  # Target: Table 1 class counts, a test set, and a reward/validation set.
  dataset = path.stem.split('_')[1]
  assert config.data.target_num_classes == TARGET_CLASSES[dataset]
  assert config.data.target_test
  assert config.data.target_val or config.data.val_examples_per_class > 0
  shots = re.search(r'_(\d+)shot_', path.stem)
  assert config.data.examples_per_class == (int(shots.group(1)) if shots else 0)


@pytest.mark.parametrize('path', PRETRAIN_FLAGFILES, ids=_ids(PRETRAIN_FLAGFILES))
def test_pretrain_flagfile(parse, path):
  config = _load(parse, path)
  assert config.mode is Mode.PRETRAIN
  assert config.train_steps == 213_000  # Table 5: N_S.
  assert config.batch_size == 256
  assert config.optimizer.momentum == 0.9
  assert config.data.source_num_classes == 1000
  assert config.data.source_label_offset == 1  # 1-based ImageNet TFRecord labels.
  assert not config.warm_start_from
  assert (config.model.backbone, config.data.image_size) == (
      ('densenet121', 224) if 'densenet121' in path.stem else ('inception_v3', 299))


@pytest.mark.parametrize('path', PAPER_FLAGFILES, ids=_ids(PAPER_FLAGFILES))
def test_warm_start_matches_a_pretrain_flagfile(parse, path):
  """Transfer runs warm-start from the model_dir of a pretrain flagfile (or JFT)."""
  pretrain_dirs = {}
  for pretrain in PRETRAIN_FLAGFILES:
    config = _load(parse, pretrain)
    pretrain_dirs[config.model_dir] = config
    FLAGS.unparse_flags()
  config = _load(parse, path)
  if not config.warm_start_from or '_jft_' in path.stem:
    return
  assert config.warm_start_from in pretrain_dirs
  pretrained = pretrain_dirs[config.warm_start_from]
  assert pretrained.model.backbone == config.model.backbone
  assert pretrained.data.image_size == config.data.image_size
  if config.mode.uses_source:
    assert pretrained.data.source_train == config.data.source_train
    assert pretrained.data.source_label_offset == config.data.source_label_offset
    assert pretrained.data.source_num_classes == config.data.source_num_classes


def test_tfds_names_are_registered_builders(parse):
  """tfds: specs name datasets this TFDS knows (checks names, not splits or data)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  names = set()
  for path in ALL_FLAGFILES:
    config = _load(parse, path)
    FLAGS.unparse_flags()
    for spec in (config.data.source_train, config.data.target_train, config.data.target_val,
                 config.data.target_test):
      parsed = input_pipeline.parse_spec(spec) if spec else None
      if parsed and parsed.is_tfds:
        names.add(parsed.tfds_name)
  for name in sorted(names):
    tfds.builder_cls(name)  # Raises DatasetNotFoundError for an unknown name.


def test_config_from_argv_leaves_the_global_flags_alone(tmp_path):
  from l2tl_tf import flag_defs  # pylint: disable=g-import-not-at-top
  config = flag_defs.config_from_argv(
      ['l2tl_train', '--mode=scratch', f'--model_dir={tmp_path}', '--batch_size=7'])
  assert config.batch_size == 7 and config.model_dir == str(tmp_path)
  assert flags.FLAGS['batch_size'].value != 7


def _documented_commands(path: pathlib.Path) -> list[list[str]]:
  """The `python -m l2tl_tf.train ...` commands written in a flagfile's comments."""
  commands, current = [], None
  for line in path.read_text().splitlines():
    text = line.lstrip('#').strip()
    if text.startswith('python -m l2tl_tf.train'):
      current = []
    if current is not None:
      current.append(text.rstrip('\\').strip())
      if not text.endswith('\\'):
        commands.append(shlex.split(' '.join(current))[3:])
        current = None
  return commands


REPLAY_FLAGFILES = [p for p in PAPER_FLAGFILES if '--policy_from=' in p.read_text()]


@pytest.mark.parametrize('path', REPLAY_FLAGFILES, ids=_ids(REPLAY_FLAGFILES))
def test_the_documented_second_stage_replays_this_files_run(path):
  """Sec. 5's train+validation stage, as the comment writes it, is a valid replay of this file."""
  (command,) = _documented_commands(path)
  root = path.parents[2]
  argv = ['l2tl-train'] + [arg.replace('--flagfile=', f'--flagfile={root}/', 1) for arg in command]
  first = flag_defs.config_from_argv(['l2tl-train', f'--flagfile={path}'])
  second = flag_defs.config_from_argv(argv)
  config_lib.validate(second)
  assert second.policy_from == first.model_dir
  assert second.model_dir != first.model_dir and not second.learns_policy
  assert not second.data.target_val and second.data.target_train != first.data.target_train
