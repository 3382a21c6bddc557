"""One worker process of tests/test_multi_worker.py.

  TF_CONFIG=... python tests/multi_worker_helper.py CONFIG_JSON OUT_NPZ [STOP_STEP]

Trains the Config saved in CONFIG_JSON with `loop.run_training` (so
--strategy=multi_worker builds MultiWorkerMirroredStrategy from TF_CONFIG)
and saves every variable of the run to OUT_NPZ. The encoder is `conv_encoder`,
registered as ENCODER_NAME: it has no BatchNorm, whose per-replica batch
statistics would differ from one process's by design. With STOP_STEP, the
process exits like a crash once step STOP_STEP has run, just before its
checkpoint would be saved, and writes no OUT_NPZ.

The test imports this file too, for the encoder and `run_state`.
"""

import json
import os
import sys

import keras
import numpy as np

from l2tl_tf import loop, models, runs
from l2tl_tf.config import Config

ENCODER_NAME = 'conv_test'


def conv_encoder(image_size, num_channels, weights):
  """A strided convolution and a flatten: every gradient is a plain sum over examples."""
  del weights
  inputs = keras.Input((image_size, image_size, num_channels))
  x = keras.layers.Conv2D(8, 3, strides=2, activation='relu', name='conv')(inputs)
  return keras.Model(inputs, keras.layers.Flatten(name='flatten')(x), name=ENCODER_NAME)


def register_encoder() -> None:
  """Adds ENCODER_NAME to the model registry of this process."""
  models.ENCODERS[ENCODER_NAME] = conv_encoder
  models.MIN_IMAGE_SIZE[ENCODER_NAME] = 1


def run_state(run: runs.Run) -> dict:
  """Every variable a run trains or keeps, by a name stable across processes."""
  groups = {'encoder': run.model.encoder.variables,
            'source_head': run.model.source_head.variables,
            'target_head': run.model.target_head.variables,
            'sgd': run.trainer.optimizer.variables,
            'step': [run.trainer.step]}
  if run.policy is not None:
    groups['policy'] = [run.policy.lambda_logits, run.policy.alpha_logits,
                        run.policy.baseline, run.policy.baseline_weight]
    groups['adam'] = run.policy.optimizer.variables
  state = {}
  for group, variables in groups.items():
    for index, variable in enumerate(variables):
      # Last path component only: Keras numbers layer and optimizer names per process.
      name = (getattr(variable, 'path', None) or variable.name).split('/')[-1]
      state[f'{group}/{index:02d}/{name}'] = variable.numpy()
  return state


class Stop(Exception):
  """Raised just before a checkpoint save to stop training like a crash."""


def main(argv) -> None:
  config_path, out_path = argv[1], argv[2]
  stop_step = int(argv[3]) if len(argv) > 3 else 0
  register_encoder()
  with open(config_path) as f:
    config = Config.from_dict(json.load(f))
  built = []

  def build_and_keep(*args, **kwargs):
    built.append(build(*args, **kwargs))
    return built[-1]

  def check_then_stop(run, step):
    if step == stop_step:
      raise Stop(f'step {step}')
    check(run, step)

  build, runs.build = runs.build, build_and_keep
  check, loop._stop_if_weights_diverged = (  # pylint: disable=protected-access
      loop._stop_if_weights_diverged, check_then_stop)  # pylint: disable=protected-access
  try:
    loop.run_training(config, log=loop.print_flushed)
  except Stop as stop:
    print(f'Stopped as asked after: {stop}', flush=True)
    # Exit at once, like a crash: a normal exit would wait about 10 s for the
    # coordination service to notice that the other worker is gone.
    os._exit(0)  # pylint: disable=protected-access
  np.savez(out_path, **run_state(built[-1]))


if __name__ == '__main__':
  main(sys.argv)
