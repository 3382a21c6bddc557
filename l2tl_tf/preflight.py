"""Checks of the settings and the data that run before --model_dir is touched.

`loop.run_training` calls `check` before it writes config.json, so a bad
input fails in seconds, not hours, and leaves the run directory alone: a fresh
--model_dir is not even created, and one that holds a run stays byte for byte
as it was. Every error names the flag, the file (and record) and the value at
fault, and says what to change.

How far each dataset is read is a trade of cost against what it catches:

* target_train and target_val are small by design (k-shot subsets and their
  validation sets), so every record is read, parsed and decoded and every
  label is checked, and the reward set must hold every target class.
* source_train can be ImageNet-scale: decoding 1.28M images before every run
  would take about 35 minutes on 2 cores, for a rare fault. So each shard's
  first record is checked (it opens, is not empty, parses, decodes and has a
  label in range) and the source stream itself checks every label as it reads
  (`input_pipeline.raw_dataset(num_classes=...)`). A corrupt record or an
  undecodable image met later stops training; `explain_input_error` then reads
  every source record once, on that failure only, to name the shard and the
  record. target_test, which training does not read, gets the same first-record
  check.
* A warm-start checkpoint is read into a throwaway copy of g (and h_S): one
  extra model build and checkpoint read, seconds even for Inception-V3.
"""

import dataclasses
import re
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from l2tl_tf import input_pipeline, models, records, runs
from l2tl_tf.config import Config, DataConfig
from l2tl_tf.policy import Policy

AUTOTUNE = tf.data.AUTOTUNE
# Error texts that mark a failure to read or decode examples: the iterator op
# (which runs the tf.data maps, including the source label check) and the image
# decode ops (which also run inside the step when source candidates are decoded
# after selection).
_INPUT_ERROR_MARKS = ('IteratorGetNext', 'Decode')


@dataclasses.dataclass(frozen=True)
class DatasetCheck:
  """A dataset the run reads, the flags that describe it, and how far to read it."""
  flag: str
  spec: str
  # 'source' or 'target': the prefix of its class-count and label-offset flags.
  side: str
  num_classes: int
  label_offset: int
  # False: only each file's first record (see the module docstring).
  every_record: bool
  # Records list positive class ids (--target_multi_label).
  multi_label: bool = False

  @property
  def name(self) -> str:
    return f'--{self.flag}={self.spec}'


@dataclasses.dataclass(frozen=True)
class Scan:
  """The 0-based labels of the records read, and where each one is stored.

  A multi-label record contributes one entry per positive class id (none
  when it has no positive class).
  """
  files: list
  file_index: np.ndarray
  position: np.ndarray
  labels: np.ndarray

  def where(self, i: int) -> str:
    return f'record {self.position[i]} of {self.files[self.file_index[i]]}'


def check(config: Config,
          strategy: tf.distribute.Strategy) -> Optional[input_pipeline.TargetSubsets]:
  """Runs every check that can fail before the first step; writes nothing.

  Settings come first (no I/O), then the data, then the run directory and the
  warm start: bad inputs are reported as such whatever --model_dir is named.

  Returns:
    The target subsets (None when the mode reads no target): choosing them
    checks k per class and the validation carve-out against the class sizes.

  Raises:
    ValueError: naming the flag, file and value at fault and the fix.
  """
  check_backbone(config)
  input_pipeline.check_batches(config, strategy.num_replicas_in_sync)
  check_selection(config, strategy.num_replicas_in_sync)
  for dataset in datasets(config):
    scan = scan_dataset(dataset, config.data)
    check_labels(dataset, scan)
    if dataset.flag == 'target_val' and (config.learns_policy or config.eval_every):
      check_reward_classes(dataset, scan)
  subsets = input_pipeline.target_subsets(config) if config.mode.uses_target else None
  runs.check_run_dir(config)
  check_warm_start(config)
  check_policy_from(config)
  return subsets


def check_selection(config: Config, num_replicas: int) -> None:
  """Global selection over several replicas needs candidates that arrive encoded.

  Every replica then reads the same M_S * B_S global candidates and keeps its
  slice of the global top B_S. `validate` refuses --selection=global with
  decoding in the pipeline; --lambda_credit=first_order also decodes (and
  scores) every candidate, so each replica reads only its own shard, and a
  global top-B_S slice of a local shard is neither selection. One replica is
  unaffected: both selections are the same there.
  """
  if (num_replicas > 1 and config.selection == 'global' and config.selects_source
      and not config.decodes_after_select):
    raise ValueError(
        f'--selection=global cannot run on {num_replicas} replicas with '
        '--lambda_credit=first_order: the credit decodes and scores every candidate, so '
        'the replicas cannot share the global candidates. Use --selection=per_replica '
        '(each replica keeps the top B_S / R of its own M_S * B_S / R candidates).')


def check_backbone(config: Config) -> None:
  """The backbone exists, takes the image size, and its weights file is there.

  `models.build_encoder` checks the same, but only once the run directory is
  written.
  """
  name, size = config.model.backbone, config.data.image_size
  weights = runs.starting_weights(config)
  if weights and not tf.io.gfile.exists(weights):
    raise ValueError(f'--backbone_weights={weights} does not exist: give a local weights file '
                     '(nothing is downloaded), or drop the flag to start from random weights.')
  if name not in models.ENCODERS:
    raise ValueError(f'--backbone={name!r} is unknown: choose one of {sorted(models.ENCODERS)}.')
  smallest = models.MIN_IMAGE_SIZE
  if size < smallest[name]:
    sizes = ', '.join(f'{backbone} {pixels}' for backbone, pixels in sorted(smallest.items()))
    raise ValueError(f'--backbone={name} cannot take --image_size={size}: it needs at least '
                     f'{smallest[name]} px. Raise --image_size, or pick a backbone that '
                     f'takes {size} px (smallest sizes: {sizes}).')
  if weights:
    _check_weights_load(config)


def _check_weights_load(config: Config) -> None:
  """Loads --backbone_weights into a throwaway encoder, as `runs.build` will.

  Weights saved from another backbone or channel count failed only in model
  building, after config.json was written, and the corrected command was then
  refused as a run with other settings.
  """
  model, data = config.model, config.data
  try:
    models.build_encoder(model.backbone, data.image_size, data.num_channels,
                         model.backbone_weights)
  except (ValueError, OSError) as error:
    raise ValueError(f'--backbone_weights={model.backbone_weights} does not fit '
                     f'--backbone={model.backbone} with --num_channels={data.num_channels} '
                     f'and --image_size={data.image_size}: {error}') from error


def source_check(config: Config, every_record: bool = False) -> DatasetCheck:
  data = config.data
  return DatasetCheck('source_train', data.source_train, 'source', data.source_num_classes,
                      data.source_label_offset, every_record)


def datasets(config: Config) -> list[DatasetCheck]:
  """The datasets this run's mode reads (and target_test), in the order checked."""
  data = config.data
  found = [source_check(config)] if config.mode.uses_source else []
  if config.mode.uses_target:
    for flag, every_record in (('target_train', True), ('target_val', True),
                               ('target_test', False)):
      spec = getattr(data, flag)
      if spec:
        found.append(DatasetCheck(flag, spec, 'target', data.target_num_classes,
                                  data.target_label_offset, every_record,
                                  data.target_multi_label))
  return found


def scan_dataset(dataset: DatasetCheck, data: DataConfig) -> Scan:
  """Reads a dataset as far as `dataset.every_record` says; returns its labels.

  TFDS datasets are checked by TFDS when prepared: only their labels are read,
  and only when every record is asked for.

  Raises:
    ValueError: for a pattern matching no file, a file that is not a readable
      TFRecord file or holds no records, a record that is not an ImageNet-style
      tf.train.Example, or an image that does not decode.
  """
  if input_pipeline.parse_spec(dataset.spec).is_tfds:
    return _scan_tfds(dataset, data)
  try:
    files = input_pipeline.list_files(dataset.spec)
  except ValueError as error:
    raise ValueError(f'--{dataset.flag}: {error}') from None
  compression = input_pipeline.tfrecord_compression_type(files)
  limit = -1 if dataset.every_record else 1
  positioned = _positioned_records(files, compression, limit)
  counts = _record_counts(dataset, files, compression, limit, positioned)
  file_index, position, label_rows, labels = _decodable_examples(
      positioned, data.num_channels, dataset.multi_label)
  bad = _first_missing(counts, file_index, position)
  if bad:
    path = files[bad[0]]
    raise _bad_record_error(dataset, path, compression, bad[1], data.num_channels)
  return Scan(files, file_index[label_rows], position[label_rows],
              labels - dataset.label_offset)


def _scan_tfds(dataset: DatasetCheck, data: DataConfig) -> Scan:
  """A TFDS dataset's labels (only when every record is asked for)."""
  if not dataset.every_record:
    return Scan([dataset.spec], np.zeros([0], np.int64), np.zeros([0], np.int64),
                np.zeros([0], np.int64))
  if not dataset.multi_label:
    labels = input_pipeline.scan_labels(dataset.spec, data, dataset.label_offset)
    return Scan([dataset.spec], np.zeros_like(labels), np.arange(len(labels)), labels)
  try:
    rows, labels = np.nonzero(input_pipeline.scan_target_labels(dataset.spec, data))
  except tf.errors.InvalidArgumentError as error:  # an id outside the class range
    raise ValueError(f'{dataset.name}: {tf_reason(error)}') from None
  return Scan([dataset.spec], np.zeros_like(rows), rows, labels)


def _positioned_records(files: list, compression: str, limit: int) -> tf.data.Dataset:
  """(file index, position in the file, serialized record), files in order."""
  def per_file(file_index, path):
    stream = tf.data.TFRecordDataset(path, compression_type=compression).take(limit)
    return stream.enumerate().map(lambda position, record: (file_index, position, record))
  return tf.data.Dataset.from_tensor_slices((np.arange(len(files)), files)).interleave(
      per_file, cycle_length=min(len(files), 16), num_parallel_calls=AUTOTUNE,
      deterministic=True)


def _record_counts(dataset: DatasetCheck, files: list, compression: str, limit: int,
                   positioned: tf.data.Dataset) -> np.ndarray:
  """Records read per file; every file must be readable and hold some."""
  try:
    file_index = _columns(positioned.map(lambda i, _, __: i), 1)[0]
  except tf.errors.OpError:
    for path in files:  # The error does not say which file: find it.
      _read_one_file(dataset, path, compression, limit)
    raise
  counts = np.bincount(file_index, minlength=len(files))
  if not counts.all():
    path = files[int(np.argmin(counts))]
    raise ValueError(f'{dataset.name}: {path} holds no records. An empty shard usually '
                     'means the job writing it failed: rewrite it, or delete it so that '
                     'the pattern no longer matches it.')
  return counts


def _read_one_file(dataset: DatasetCheck, path: str, compression: str, limit: int) -> None:
  stream = tf.data.TFRecordDataset(path, compression_type=compression).take(limit)
  try:
    stream.reduce(np.int64(0), lambda count, _: count + 1)
  except tf.errors.OpError as error:
    raise ValueError(f'{dataset.name}: {path} is not a readable TFRecord file '
                     f'({tf_reason(error)}). Rewrite it, or delete it so that the pattern '
                     'no longer matches it.') from None


def _decodable_examples(positioned: tf.data.Dataset, num_channels: int,
                        multi_label: bool = False):
  """Where each record that parses and decodes is, and its stored labels.

  Records that fail are dropped (`ignore_errors`) in one parallel pass and
  found afterwards by their missing positions.

  Returns:
    (file index, position) per record, then each stored label with the
    record it belongs to (label_rows indexes the first two): one per record,
    or one per positive class id of a multi-label record.
  """
  def decoded(file_index, position, record):
    image, label = records.parse_example(record, multi_label)
    # Returned so that the decode runs (and fails here) rather than being pruned.
    shape = tf.shape(input_pipeline.decode_image(image, num_channels))
    return file_index, position, tf.reshape(label, [-1]), shape
  dataset = positioned.map(decoded, num_parallel_calls=AUTOTUNE).ignore_errors()
  file_index, position, label_rows, labels = [], [], [], []
  count = 0
  for batch in dataset.ragged_batch(4096):
    # Dense when every label list has one static length (single-label records).
    stored = (batch[2] if isinstance(batch[2], tf.RaggedTensor)
              else tf.RaggedTensor.from_tensor(batch[2]))
    file_index.append(batch[0].numpy())
    position.append(batch[1].numpy())
    label_rows.append(count + stored.value_rowids().numpy())
    labels.append(stored.flat_values.numpy())
    count += len(file_index[-1])
  return [np.concatenate(c).astype(np.int64) if c else np.zeros([0], np.int64)
          for c in (file_index, position, label_rows, labels)]


def _columns(dataset: tf.data.Dataset, count: int) -> list:
  """The first `count` components of a dataset's elements as int64 numpy arrays."""
  columns = [[] for _ in range(count)]
  for batch in dataset.batch(4096).as_numpy_iterator():
    batch = batch if isinstance(batch, tuple) else (batch,)
    for column, values in zip(columns, batch):
      column.append(values)
  return [np.concatenate(c).astype(np.int64) if c else np.zeros([0], np.int64)
          for c in columns]


def _first_missing(counts: np.ndarray, file_index: np.ndarray, position: np.ndarray):
  """(file index, position) of the first record read but not decoded, or None."""
  short = np.flatnonzero(np.bincount(file_index, minlength=len(counts)) < counts)
  if not short.size:
    return None
  seen = np.zeros(counts[short[0]], bool)
  seen[position[file_index == short[0]]] = True
  return int(short[0]), int(np.argmin(seen))


def _bad_record_error(dataset: DatasetCheck, path: str, compression: str, position: int,
                      num_channels: int) -> ValueError:
  """Why one record failed: it is not our tf.train.Example, or its image does not decode."""
  stream = tf.data.TFRecordDataset(path, compression_type=compression)
  record = next(iter(stream.skip(position).take(1)))
  where = f'{dataset.name}: record {position} of {path}'
  try:
    image, _ = records.parse_example(record, dataset.multi_label)
  except tf.errors.InvalidArgumentError as error:
    return ValueError(f'{where} is not an ImageNet-style tf.train.Example ({tf_reason(error)}). '
                      f'Each record needs {records.IMAGE_KEY} (bytes) and {records.LABEL_KEY} '
                      f'(int64): rewrite the shard with those features.'
                      f'{_multi_label_hint(record, dataset.side)}')
  try:
    input_pipeline.decode_image(image, num_channels)
  except tf.errors.InvalidArgumentError as error:
    encoded = image.numpy()
    return ValueError(f'{where}: its image does not decode ({tf_reason(error)}; '
                      f'{len(encoded)} bytes starting {encoded[:8]!r}). Re-encode it as PNG or '
                      'JPEG, or rewrite the shard without it.')
  return ValueError(f'{where} failed to decode once but not on a second read: check the '
                    'storage it is read from.')


def _multi_label_hint(record: tf.Tensor, side: str) -> str:
  """A hint when a record that fails the single-label parse lists other than one label."""
  try:
    _, ids = records.parse_example(record, multi_label=True)
  except tf.errors.InvalidArgumentError:
    return ''
  if tf.size(ids) == 1:
    return ''
  listed = f' It lists {int(tf.size(ids))} labels ({ids.numpy().tolist()[:10]})'
  if side == 'source':
    return f'{listed}: source records need exactly one (the source is single-label).'
  return f'{listed}: if the target is multi-label, pass --target_multi_label.'


def tf_reason(error: tf.errors.OpError) -> str:
  """TensorFlow's message without its node and op decorations."""
  text = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\]|\bname:\s*$', '', error.message)
  return ' '.join(text.split())


def looks_one_based(labels: np.ndarray, num_classes: int) -> bool:
  """Labels run 1..num_classes and 0 never appears: stored 1-based, read without the offset."""
  return bool(labels.size and labels.max() == num_classes and labels.min() >= 1)


def check_labels(dataset: DatasetCheck, scan: Scan) -> None:
  """Every label read is in [0, num_classes); 1-based labels get the offset flag named."""
  labels, count = scan.labels, dataset.num_classes
  count_flag = f'--{dataset.side}_num_classes={count}'
  offset_flag = f'--{dataset.side}_label_offset'
  if looks_one_based(labels, count):
    raise ValueError(f'{dataset.name} looks 1-based: its labels run {labels.min()}..{count} and '
                     f'0 never appears, but {count_flag} counts classes 0..{count - 1}. Pass '
                     f'{offset_flag}={dataset.label_offset + 1} (ImageNet TFRecords store '
                     'labels 1..1000).')
  bad = np.flatnonzero((labels < 0) | (labels >= count))
  if bad.size:
    i = bad[0]
    raise ValueError(f'{dataset.name}: {scan.where(i)} has label '
                     f'{labels[i] + dataset.label_offset}, which is {labels[i]} after '
                     f'{offset_flag}={dataset.label_offset}, outside [0, {count}) for '
                     f'{count_flag}. Fix the record, or the class count or offset flag.')


def check_reward_classes(dataset: DatasetCheck, scan: Scan) -> None:
  """The reward (validation) set holds every target class."""
  missing = np.setdiff1d(np.arange(dataset.num_classes), scan.labels)
  if missing.size and dataset.multi_label:
    raise ValueError(f'{dataset.name} has no positive of target class {missing[0]} (classes '
                     f'without any: {missing[:10].tolist()}, of --target_num_classes='
                     f'{dataset.num_classes}); the AUC reward and validation curves need '
                     'positives of every class. Rebuild the reward split with some (for '
                     'CheXpert, another --reward_fraction or --seed of convert_chexpert.py, '
                     'into a new --output_dir).')
  if missing.size:
    raise ValueError(f'{dataset.name} has no example of target class {missing[0]} (classes '
                     f'without any: {missing[:10].tolist()}, of --target_num_classes='
                     f'{dataset.num_classes}); rewards and validation curves need every '
                     'class. Add examples of those classes, or leave --target_val empty and '
                     'carve a reward set out of --target_train with --val_examples_per_class.')


def check_warm_start(config: Config) -> None:
  """Reads --warm_start_from into a throwaway g (and h_S) before anything is written.

  A run that resumes its own checkpoint ignores --warm_start_from, so it is
  not read then.
  """
  if not config.warm_start_from or tf.train.latest_checkpoint(config.model_dir):
    return
  data = config.data
  model = models.TransferModel(config.model.backbone, data.image_size, data.num_channels,
                               data.source_num_classes if config.mode.uses_source else 0, 0)
  runs.load_pretrained(model, config, config.warm_start_from)


def check_policy_from(config: Config) -> None:
  """Reads --policy_from's learned logits into a throwaway policy before anything is written.

  The learned run must draw the same actions: the same source classes and
  lambda / alpha_s levels, with the same values. A run that resumes its own
  checkpoint does not read --policy_from.
  """
  if not config.policy_from or tf.train.latest_checkpoint(config.model_dir):
    return
  try:
    learned = runs.load_config(config.policy_from)
  except ValueError:
    raise ValueError(f'--policy_from={config.policy_from} is not a run directory (it has no '
                     f'{runs.CONFIG_FILE}): give the directory of the L2TL run whose policy '
                     'to replay.') from None
  if not learned.mode.uses_policy:
    raise ValueError(f'--policy_from={config.policy_from} is a {learned.mode.value} run: it '
                     'learned no policy. Give the directory of an l2tl (or uniform, random, '
                     'fixed) run.')
  ours, theirs = _policy_shape(config), _policy_shape(learned)
  differ = [f'--{key}={theirs[key]}' for key in ours if ours[key] != theirs[key]]
  if differ:
    listed = ' '.join(f'--{key}={ours[key]}' for key in ours if ours[key] != theirs[key])
    raise ValueError(f'--policy_from={config.policy_from} learned its policy with '
                     f'{" ".join(differ)} but this run has {listed}: the replay draws the '
                     'learned actions, so those settings must match.')
  runs.load_policy(Policy(config.data.source_num_classes, config.policy, config.seed),
                   config.policy_from)


def _policy_shape(config: Config) -> dict:
  """What the replayed actions mean, by flag name: the mode (which of lambda and
  alpha_s the policy learned), the source classes, and the levels' number and
  values (alpha's scale is beta for the paper's levels, the divisor for the
  official ones)."""
  policy = config.policy
  shape = {'mode': config.mode.value, 'source_num_classes': config.data.source_num_classes,
           'num_lambda_levels': policy.num_lambda_levels,
           'num_alpha_levels': policy.num_alpha_levels,
           'policy_level_values': policy.level_values}
  if policy.level_values == 'paper':
    shape['alpha_beta'] = policy.alpha_beta
  else:
    shape['alpha_divisor'] = policy.alpha_divisor
  return shape


def explain_input_error(config: Config, error: tf.errors.OpError, steps: str,
                        log: Callable[[str], None]) -> None:
  """Names the source shard and record behind a read or decode error met in training.

  Only source_train is read past its shards' first records during training
  (the target data was read in full by `check`), so only it is scanned: every
  record, once, on failure. Returns without raising when the error is not an
  input error or the scan finds nothing, so the caller re-raises the original.

  Raises:
    ValueError: naming the shard, the record and the fix, from `error`.
  """
  is_input_error = isinstance(error, tf.errors.DataLossError) or any(
      mark in str(error) for mark in _INPUT_ERROR_MARKS)
  source = source_check(config, every_record=True)
  if (not is_input_error or not config.mode.uses_source
      or input_pipeline.parse_spec(source.spec).is_tfds):
    return
  log(f'An input error stopped training in {steps}: reading every record of {source.name} '
      'to find it.')
  try:
    check_labels(source, scan_dataset(source, config.data))
  except ValueError as found:
    raise ValueError(f'{found} (Met during training, in {steps}.)') from error
