"""Two worker processes under MultiWorkerMirroredStrategy train like one process.

Two workers on 127.0.0.1 (TF_CONFIG, --strategy=multi_worker) run L2TL steps
through `loop.run_training`, stop like a crash after a checkpoint, and resume.
Both must end with identical variables (encoder, heads, optimizer slots,
policy logits, baseline), equal to one process trained on the same global
batches, and only the chief may leave files in model_dir.

Exactness needs an encoder without BatchNorm (per-replica batch statistics
differ from one device's by design) and --selection=global: every worker
keeps its slice of the global top B_S of the M_S * B_S = 5 * B_S candidates,
which is what one device keeps (per-replica top-k is not, by design).
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import multi_worker_helper as helper
from conftest import QUIET_ENV, tiny_config
from l2tl_tf import input_pipeline, models, runs, strategy as strategy_lib
from l2tl_tf.config import Config, ModelConfig

NUM_WORKERS = 2
TRAIN_STEPS = 4
# Whole-cluster deadline per launch (a launch took 15-45 s here, by load). A hung
# collective never returns, so the workers' process groups are killed.
LAUNCH_TIMEOUT_SECONDS = 120
HELPER = os.path.join(os.path.dirname(__file__), 'multi_worker_helper.py')
# Worker-vs-one-process tolerance on every variable. The math is the same;
# only float32 summation order differs (each worker sums its half-batch, the
# all-reduce adds the halves). Measured: at most 1.5e-8, about one float32 ulp
# of the weights (|w| <= 0.28); the policy state is bit-exact, as the reward
# is a count over B_P. 1e-6 leaves 60x for other CPUs; a wrong shard, per-replica
# selection or a missing all-reduce moves weights by more than 1e-3.
ATOL = 1e-6


def free_ports(count):
  """Ports the OS reports free on 127.0.0.1 (held open together, so distinct)."""
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]


def tf_config(ports, index):
  return json.dumps({'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
                     'task': {'type': 'worker', 'index': index}})


def tail(path, lines=25):
  with open(path, errors='replace') as f:
    return ''.join(f.readlines()[-lines:])


def run_cluster(config_path, out_dir, name, *helper_args):
  """Runs NUM_WORKERS helper processes to completion; returns their pids and stdouts.

  Raises:
    AssertionError: when a worker fails or the cluster misses its deadline,
      with every worker's exit status and the tail of its output.
  """
  ports = free_ports(NUM_WORKERS)
  workers = []
  try:
    for index in range(NUM_WORKERS):
      prefix = os.path.join(out_dir, f'{name}_worker{index}')
      command = [sys.executable, HELPER, config_path, f'{prefix}.npz', *helper_args]
      with open(f'{prefix}.out', 'w') as stdout, open(f'{prefix}.err', 'w') as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr,
                                   env=dict(QUIET_ENV, TF_CONFIG=tf_config(ports, index)),
                                   start_new_session=True)
      workers.append((process, prefix))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_SECONDS
    timed_out = False
    for process, _ in workers:
      try:
        process.wait(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        timed_out = True
  finally:
    for process, _ in workers:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
  if timed_out or any(process.returncode for process, _ in workers):
    report = [f'{name}: workers on ports {ports}'
              + (f' missed the {LAUNCH_TIMEOUT_SECONDS} s deadline and were killed'
                 if timed_out else ' failed')]
    for process, prefix in workers:
      report.append(f'--- {prefix} exit {process.returncode}\nstdout tail:\n'
                    f'{tail(prefix + ".out", 5)}stderr tail:\n{tail(prefix + ".err")}')
    raise AssertionError('\n'.join(report))
  return [(process.pid, pathlib.Path(f'{prefix}.out').read_text())
          for process, prefix in workers]


def one_process_reference(config):
  """The same steps on one device, fed the global batches the workers shared.

  Each worker reads its own shard of the target and reward streams, so those
  are the shards' per-replica batches concatenated; the source candidates
  are the same global batch on every worker.

  Returns:
    (initial state, final state) as dicts of arrays keyed like `run_state`.
  """
  keras.utils.set_random_seed(config.seed)
  run = runs.build(config, tf.distribute.get_strategy())
  initial = helper.run_state(run)
  subsets = input_pipeline.target_subsets(config)
  # --selection=global: every worker reads the same global source candidates.
  iterators = {'source': iter(input_pipeline.source_dataset(config))}
  makers = {
      'target': lambda ctx: input_pipeline.target_train_dataset(config, subsets, ctx),
      'reward': lambda ctx: input_pipeline.reward_dataset(config, subsets, ctx),
  }
  for stream, make in makers.items():
    shards = tuple(make(tf.distribute.InputContext(NUM_WORKERS, i, NUM_WORKERS))
                   for i in range(NUM_WORKERS))
    iterators[stream] = iter(tf.data.Dataset.zip(shards).map(
        lambda *batches: tuple(tf.concat(parts, 0) for parts in zip(*batches))))
  run.trainer.train_loop(iterators, tf.constant(TRAIN_STEPS))
  return initial, helper.run_state(run)


def max_difference(a, b):
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]), initial=0.0)) for k in a)


@pytest.fixture(scope='module')
def conv_encoder():
  """The helper's BatchNorm-free encoder, registered in this process too."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(models.ENCODERS, helper.ENCODER_NAME, helper.conv_encoder)
    min_image_sizes = models.MIN_IMAGE_SIZE
    patch.setitem(min_image_sizes, helper.ENCODER_NAME, 1)
    yield


@dataclasses.dataclass
class ClusterRun:
  """What the two launches of the cluster left behind."""
  config: Config
  model_dir: pathlib.Path
  crashed: list          # (pid, stdout) per worker of the launch stopped after step 4
  latest_after_crash: str
  resumed: list          # (pid, stdout) per worker of the launch that resumed
  states: list           # run_state of each resumed worker at the end


@pytest.fixture(scope='module')
def cluster_run(tiny_data, tmp_path_factory, conv_encoder) -> ClusterRun:
  """Two workers run 4 L2TL steps, die before the step-4 checkpoint, then resume."""
  del conv_encoder
  root = tmp_path_factory.mktemp('multi_worker')
  config = tiny_config(tiny_data, root / 'run', strategy='multi_worker',
                       selection='global', train_steps=TRAIN_STEPS, steps_per_loop=2,
                       checkpoint_every=2, model=ModelConfig(backbone=helper.ENCODER_NAME))
  config_path = root / 'config.json'
  config_path.write_text(config.to_json())
  crashed = run_cluster(str(config_path), str(root), 'crashed', str(TRAIN_STEPS))
  latest_after_crash = tf.train.latest_checkpoint(config.model_dir)
  resumed = run_cluster(str(config_path), str(root), 'resumed')
  states = [dict(np.load(root / f'resumed_worker{i}.npz')) for i in range(NUM_WORKERS)]
  return ClusterRun(config, root / 'run', crashed, latest_after_crash, resumed, states)


def test_every_worker_resumes_from_the_chiefs_checkpoint(cluster_run):
  for _, stdout in cluster_run.crashed:
    assert 'Stopped as asked' in stdout, stdout
  assert cluster_run.latest_after_crash.endswith('ckpt-2')
  for _, stdout in cluster_run.resumed:
    assert 'from step 2' in stdout, stdout


def test_workers_end_with_identical_variables(cluster_run):
  first, second = cluster_run.states
  assert sorted(first) == sorted(second)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  assert [int(v) for k, v in first.items() if k.startswith('step/')] == [TRAIN_STEPS]
  print(f'max |worker 0 - worker 1| = {max_difference(first, second):.3g}')


def test_workers_match_one_process_on_the_same_global_batches(cluster_run):
  initial, reference = one_process_reference(cluster_run.config)
  worker = cluster_run.states[0]
  assert sorted(reference) == sorted(worker)
  for name in reference:
    np.testing.assert_allclose(worker[name], reference[name], rtol=0, atol=ATOL, err_msg=name)
  print(f'max |worker - one process| = {max_difference(worker, reference):.3g}')
  # Not vacuous: SGD moved the encoder and REINFORCE moved the policy.
  encoder = {k: v for k, v in reference.items() if k.startswith('encoder/')}
  assert max_difference(encoder, initial) > 1e-3
  assert np.abs(next(v for k, v in reference.items() if 'lambda_logits' in k)).max() > 1e-4


def test_only_the_chief_writes_into_model_dir(cluster_run):
  model_dir = cluster_run.model_dir
  assert not [p for p in os.listdir(model_dir)
              if p.startswith(strategy_lib.WORKER_TEMP_PREFIX)]
  # Event file names end in .<pid>.<counter>.v2: one file per launch, the chief's.
  event_pids = {int(p.split('.')[-3]) for p in os.listdir(model_dir)
                if p.startswith('events.out.tfevents.')}
  assert event_pids == {cluster_run.crashed[0][0], cluster_run.resumed[0][0]}
  assert (model_dir / 'source_class_weights.csv').exists()
  assert json.loads((model_dir / 'config.json').read_text())['strategy'] == 'multi_worker'
  restored = helper.run_state(runs.restore_for_inference(str(model_dir)))
  for name in restored:
    np.testing.assert_array_equal(restored[name], cluster_run.states[0][name], err_msg=name)
