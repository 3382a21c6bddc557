"""Nothing lost on a crash: SIGTERM checkpoints and exits 42; SIGKILL resumes exactly."""

import random
import signal
import subprocess

import numpy as np
import tensorflow as tf

from conftest import QUIET_ENV, binary_command, tiny_flagfile
from test_loop import all_state


def start_training(flagfile, model_dir, *extra):
  return subprocess.Popen(
      binary_command('train', f'--flagfile={flagfile}', f'--model_dir={model_dir}', *extra),
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=QUIET_ENV)


def wait_for_progress_lines(process, count):
  """Reads stdout until `count` progress lines have appeared."""
  seen = 0
  for line in process.stdout:
    seen += ' step ' in line and 'steps/s' in line
    if seen >= count:
      return
  raise AssertionError('training ended before the expected progress lines')


def test_sigterm_saves_a_checkpoint_and_exits_for_a_rerun(tiny_data, tmp_path):
  flagfile = tiny_flagfile(tiny_data, tmp_path / 'tiny.flags')
  model_dir = tmp_path / 'run'
  process = start_training(flagfile, model_dir, '--mode=scratch', '--train_steps=100000',
                           '--checkpoint_every=100000')
  wait_for_progress_lines(process, 1)
  process.send_signal(signal.SIGTERM)
  remaining = process.stdout.read()
  assert process.wait(timeout=120) == 42
  assert 'SIGTERM received' in remaining
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest and int(latest.rsplit('-', 1)[1]) >= 2  # not a checkpoint_every multiple


def test_sigkill_at_a_random_step_then_rerun_matches_an_uninterrupted_run(
    tiny_data, pretrained, tmp_path):
  flagfile = tiny_flagfile(tiny_data, tmp_path / 'tiny.flags')
  common = ('--mode=l2tl', f'--warm_start_from={pretrained}', '--deterministic',
            '--train_steps=12', '--checkpoint_every=4')
  uninterrupted = start_training(flagfile, tmp_path / 'full', *common)
  uninterrupted.communicate(timeout=300)
  assert uninterrupted.returncode == 0

  killed = start_training(flagfile, tmp_path / 'killed', *common)
  wait_for_progress_lines(killed, random.Random(0).randint(2, 5))
  killed.kill()
  killed.wait(timeout=60)
  assert killed.returncode == -signal.SIGKILL
  rerun = start_training(flagfile, tmp_path / 'killed', *common)
  rerun.communicate(timeout=300)
  assert rerun.returncode == 0
  for x, y in zip(all_state(str(tmp_path / 'full')), all_state(str(tmp_path / 'killed'))):
    np.testing.assert_array_equal(x, y)
