"""The multi-worker parts of strategy.py: TF_CONFIG checks and chief-only writing.

Two real worker processes are in test_multi_worker.py; here a stand-in for a
non-chief worker's strategy exercises the file conventions in one process.
"""

import glob
import json
import os
import types

import pytest
import tensorflow as tf

from l2tl_tf import strategy as strategy_lib

CLUSTER = {'worker': ['127.0.0.1:1', '127.0.0.1:2']}


def non_chief(task_id=1):
  """What loop.py reads from a non-chief worker's MultiWorkerMirroredStrategy."""
  return types.SimpleNamespace(extended=types.SimpleNamespace(should_checkpoint=False),
                               cluster_resolver=types.SimpleNamespace(task_id=task_id))


def test_tf_config_of_a_worker_is_returned():
  value = {'cluster': CLUSTER, 'task': {'type': 'worker', 'index': 1}}
  assert strategy_lib.read_tf_config({'TF_CONFIG': json.dumps(value)}) == value


@pytest.mark.parametrize('tf_config, message', [
    (None, 'which is not set'),
    ('{"cluster": ', 'is not JSON'),
    (json.dumps({'task': {'type': 'worker', 'index': 0}}), 'no "cluster"'),
    (json.dumps({'cluster': CLUSTER}), 'needs "task"'),
    (json.dumps({'cluster': CLUSTER, 'task': {'type': 'chief', 'index': 0}}), 'not in its'),
    (json.dumps({'cluster': CLUSTER, 'task': {'type': 'worker', 'index': 2}}), 'not in its'),
])
def test_bad_tf_config_is_explained(tf_config, message):
  environ = {} if tf_config is None else {'TF_CONFIG': tf_config}
  with pytest.raises(ValueError, match=message):
    strategy_lib.read_tf_config(environ)


def test_multi_worker_without_tf_config_refuses_to_train_alone(monkeypatch):
  monkeypatch.delenv('TF_CONFIG', raising=False)
  with pytest.raises(ValueError, match='TF_CONFIG'):
    strategy_lib.get_strategy('multi_worker')


def test_multi_worker_after_tensorflow_ran_an_op_says_to_build_it_first(monkeypatch):
  monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': CLUSTER,
                                              'task': {'type': 'worker', 'index': 0}}))
  tf.constant(1.0) + 1.0  # pylint: disable=expression-not-assigned
  with pytest.raises(RuntimeError, match='before TensorFlow runs any op'):
    strategy_lib.get_strategy('multi_worker')


def test_one_process_is_the_chief_and_writes_into_model_dir(tmp_path):
  strategy = tf.distribute.get_strategy()
  assert strategy_lib.is_chief(strategy)
  assert strategy_lib.write_dir(str(tmp_path), strategy) == str(tmp_path)
  with strategy_lib.summary_writer(str(tmp_path), strategy).as_default(step=1):
    tf.summary.scalar('x', 1.0)
  assert glob.glob(str(tmp_path / 'events.out.tfevents.*'))


def test_a_non_chief_writes_no_summaries(tmp_path):
  with strategy_lib.summary_writer(str(tmp_path), non_chief()).as_default(step=1):
    tf.summary.scalar('x', 1.0)
  assert not os.listdir(tmp_path)


def test_a_non_chief_saves_to_a_temp_dir_deleted_at_once_and_resumes_from_the_chief(tmp_path):
  variable = tf.Variable(1.0)
  checkpoint = tf.train.Checkpoint(v=variable)
  chief = strategy_lib.ChiefCheckpointManager(checkpoint, str(tmp_path),
                                              tf.distribute.get_strategy(), max_to_keep=2)
  worker = strategy_lib.ChiefCheckpointManager(checkpoint, str(tmp_path), non_chief(),
                                               max_to_keep=2)
  assert worker.latest_checkpoint is None
  chief.save(checkpoint_number=3)
  variable.assign(2.0)
  worker.save(checkpoint_number=4)
  assert strategy_lib.write_dir(str(tmp_path), non_chief()) == str(tmp_path / 'workertemp_1')
  assert sorted(os.listdir(tmp_path)) == ['checkpoint', 'ckpt-3.data-00000-of-00001',
                                          'ckpt-3.index']
  assert worker.latest_checkpoint == chief.latest_checkpoint == str(tmp_path / 'ckpt-3')


@pytest.mark.parametrize('tpu, connects', [('local', False), ('grpc://10.0.0.2:8470', True),
                                           ('my-tpu', True)])
def test_tpu_resolver_gets_the_tpu_flag_as_given(monkeypatch, tpu, connects):
  """'local' was turned into None, which asks the Cloud TPU API for $TPU_NAME and fails."""
  calls = []
  monkeypatch.setattr(tf.distribute.cluster_resolver, 'TPUClusterResolver',
                      lambda tpu: calls.append(('resolve', tpu)) or tpu)
  monkeypatch.setattr(tf.config, 'experimental_connect_to_cluster',
                      lambda resolver: calls.append(('connect', resolver)))
  monkeypatch.setattr(tf.tpu.experimental, 'initialize_tpu_system',
                      lambda resolver: calls.append(('initialize', resolver)))
  monkeypatch.setattr(tf.distribute, 'TPUStrategy', lambda resolver: ('strategy', resolver))
  assert strategy_lib.get_strategy('tpu', tpu) == ('strategy', tpu)
  assert calls[0] == ('resolve', tpu)
  assert (('connect', tpu) in calls) == connects
  assert calls[-1] == ('initialize', tpu)
