"""One factory from a strategy name to a tf.distribute.Strategy.

Mirrors tensorflow/models `distribute_utils.get_distribution_strategy`: code
above this file is strategy-agnostic, so the same loop runs on one CPU, on
logical CPU replicas in tests, on several workers, and on a TPU.
"""

import tensorflow as tf

STRATEGIES = ('default', 'one_device', 'mirrored', 'multi_worker', 'tpu')


def get_strategy(name: str = 'default', tpu: str = '') -> tf.distribute.Strategy:
  """Builds the strategy named `name`; a non-empty `tpu` always means TPU.

  Args:
    name: one of STRATEGIES.
    tpu: TPU address or name for TPUClusterResolver ('local' for a TPU VM).

  Raises:
    ValueError: for an unknown name, or 'tpu' without an address.
  """
  if tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=None if tpu == 'local' else tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
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
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'tpu':
    raise ValueError('--strategy=tpu needs --tpu=ADDRESS (or --tpu=local on a TPU VM).')
  raise ValueError(f'--strategy={name!r} is unknown; choose one of {STRATEGIES}.')


def split_cpu(num_devices: int) -> None:
  """Splits the host CPU into `num_devices` logical devices (for replicas in tests).

  Must run before TensorFlow initialises its devices.
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
