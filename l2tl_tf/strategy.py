"""One factory from a strategy name to a tf.distribute.Strategy, and who writes.

Mirrors tensorflow/models `distribute_utils.get_distribution_strategy`: code
above this file is strategy-agnostic, so the same loop runs on one CPU, on
logical CPU replicas in tests, on several workers, and on a TPU.

Under MultiWorkerMirroredStrategy every worker runs the same program, but one
copy of the run's outputs must exist: the chief writes checkpoints, summaries
and result files into model_dir; the other workers still save (saving may
need every worker, e.g. to read SyncOnRead variables) but into
model_dir/workertemp_<task id>, deleted at once, and resume from the chief's
checkpoint. This is the convention of Keras' `distributed_file_utils`.
"""

import json
import os
from typing import Mapping, Optional

import tensorflow as tf

STRATEGIES = ('default', 'one_device', 'mirrored', 'multi_worker', 'tpu')
# A non-chief worker's throw-away checkpoint directory inside model_dir.
WORKER_TEMP_PREFIX = 'workertemp_'
_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:port", "host1:port"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


def get_strategy(name: str = 'default', tpu: str = '') -> tf.distribute.Strategy:
  """Builds the strategy named `name`; a non-empty `tpu` always means TPU.

  Args:
    name: one of STRATEGIES. 'multi_worker' reads the cluster from the
      TF_CONFIG environment variable and must be built before TensorFlow runs
      any op in the process.
    tpu: TPU address or name for TPUClusterResolver ('local' for a TPU VM).

  Raises:
    ValueError: for an unknown name, 'tpu' without an address, or
      'multi_worker' with a missing or malformed TF_CONFIG.
    RuntimeError: for 'multi_worker' built after TensorFlow ran an op.
  """
  if tpu:
    return _tpu_strategy(tpu)
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'one_device':
    devices = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
    return tf.distribute.OneDeviceStrategy(devices[0].name)
  if name == 'mirrored':
    # Without accelerators, mirror over every logical CPU (see `split_cpu`).
    devices = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == 'multi_worker':
    return _multi_worker_strategy()
  if name == 'tpu':
    raise ValueError('--strategy=tpu needs --tpu=ADDRESS (or --tpu=local on a TPU VM).')
  raise ValueError(f'--strategy={name!r} is unknown; choose one of {STRATEGIES}.')


def _tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
  """TPUStrategy for a TPU named or addressed by `tpu`, or 'local' on a TPU VM.

  'local' goes to the resolver as it is: there it means the TPU attached to
  this VM, while None would ask the Cloud TPU API for $TPU_NAME. A local TPU
  has no remote cluster to connect to.
  """
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
  if tpu != 'local':
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def _multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
  read_tf_config()
  try:
    return tf.distribute.MultiWorkerMirroredStrategy()
  except RuntimeError as error:
    if 'program startup' not in str(error):
      raise
    raise RuntimeError(
        '--strategy=multi_worker must be built before TensorFlow runs any op in the '
        'process (it configures collective ops): call get_strategy first.') from error


def read_tf_config(environ: Optional[Mapping[str, str]] = None) -> dict:
  """The cluster and task from TF_CONFIG, checked before TensorFlow reads it.

  Without TF_CONFIG, MultiWorkerMirroredStrategy silently trains alone, so
  every machine would run its own copy of the run into one model_dir.

  Args:
    environ: the environment to read (os.environ by default).

  Raises:
    ValueError: naming what is missing or wrong, with an example TF_CONFIG.
  """
  raw = (os.environ if environ is None else environ).get('TF_CONFIG', '')
  if not raw:
    raise ValueError('--strategy=multi_worker reads the cluster from the TF_CONFIG '
                     f'environment variable, which is not set. Set it on every worker, e.g. '
                     f'{_TF_CONFIG_EXAMPLE} (use --strategy=mirrored on one machine).')
  try:
    tf_config = json.loads(raw)
  except json.JSONDecodeError as error:
    raise ValueError(f'TF_CONFIG is not JSON ({error}): expected e.g. '
                     f'{_TF_CONFIG_EXAMPLE}.') from error
  cluster = tf_config.get('cluster') if isinstance(tf_config, dict) else None
  task = tf_config.get('task') if isinstance(tf_config, dict) else None
  if not isinstance(cluster, dict) or not cluster:
    raise ValueError(f'TF_CONFIG={raw} has no "cluster" of jobs: expected e.g. '
                     f'{_TF_CONFIG_EXAMPLE}.')
  if not isinstance(task, dict) or 'type' not in task or 'index' not in task:
    raise ValueError(f'TF_CONFIG={raw} needs "task": {{"type": ..., "index": ...}} saying '
                     'which cluster member this process is.')
  members = cluster.get(task['type'])
  if not isinstance(members, list) or not 0 <= int(task['index']) < len(members):
    raise ValueError(f'TF_CONFIG task {task} is not in its cluster {cluster}: the task type '
                     'must be a job of the cluster and the index below its size.')
  return tf_config


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one process that writes the run's outputs (always, on one host)."""
  return strategy.extended.should_checkpoint


def write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Where this process saves checkpoints: model_dir, or a non-chief's temp dir."""
  if is_chief(strategy):
    return model_dir
  return os.path.join(model_dir, f'{WORKER_TEMP_PREFIX}{strategy.cluster_resolver.task_id}')


class ChiefCheckpointManager:
  """A CheckpointManager for every worker that keeps only the chief's checkpoints.

  `save` runs on every worker; a non-chief's copy is deleted right away.
  `latest_checkpoint` is always the chief's, in model_dir, so every worker
  resumes from the same checkpoint.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str,
               strategy: tf.distribute.Strategy, max_to_keep: int):
    self.directory = model_dir
    self._writes_outputs = is_chief(strategy)
    self._manager = tf.train.CheckpointManager(checkpoint, write_dir(model_dir, strategy),
                                               max_to_keep=max_to_keep)

  @property
  def latest_checkpoint(self) -> Optional[str]:
    return tf.train.latest_checkpoint(self.directory)

  def save(self, checkpoint_number: int) -> None:
    self._manager.save(checkpoint_number=checkpoint_number)
    if not self._writes_outputs:
      tf.io.gfile.rmtree(self._manager.directory)


def summary_writer(model_dir: str, strategy: tf.distribute.Strategy):
  """An event-file writer for model_dir on the chief, a no-op writer elsewhere."""
  if is_chief(strategy):
    return tf.summary.create_file_writer(model_dir)
  return tf.summary.create_noop_writer()


def split_cpu(num_devices: int) -> None:
  """Splits the host CPU into `num_devices` logical devices (for replicas in tests).

  Must run before TensorFlow initialises its devices.
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
