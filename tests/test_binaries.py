"""Each binary end to end in its own process, as users run them."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import QUIET_ENV, binary_command, striped_images, tiny_flagfile
from l2tl_tf import input_pipeline, records, runs

CONTRACT_FLAGS = ('mode', 'model_dir', 'source_train', 'target_train', 'target_val',
                  'target_test', 'source_num_classes', 'target_num_classes', 'image_size',
                  'backbone', 'train_steps', 'batch_size', 'warm_start_from',
                  'examples_per_class', 'seed')


def run_binary(name, *args, returncode=0):
  result = subprocess.run(binary_command(name, *args), env=QUIET_ENV,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == returncode, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
  """A pretrain run then an L2TL run, each started from the command line."""
  root = tmp_path_factory.mktemp('binaries')
  flagfile = tiny_flagfile(tiny_data, root / 'tiny.flags')
  pretrain, l2tl = str(root / 'pretrain'), str(root / 'l2tl')
  run_binary('train', f'--flagfile={flagfile}', '--mode=pretrain', f'--model_dir={pretrain}')
  stdout = run_binary('train', f'--flagfile={flagfile}', '--mode=l2tl', f'--model_dir={l2tl}',
                      f'--warm_start_from={pretrain}')
  assert 'Finished 4 steps' in stdout
  return l2tl


def test_train_helpfull_lists_the_contract_flags():
  stdout = run_binary('train', '--helpfull', returncode=1)  # absl exits 1 after help
  for flag in CONTRACT_FLAGS:
    assert f'--{flag}:' in stdout, flag


def test_evaluate_writes_metrics_for_the_test_split(trained):
  stdout = run_binary('evaluate', f'--model_dir={trained}')
  metrics = json.load(open(os.path.join(trained, 'metrics.json')))
  assert json.loads(stdout) == metrics
  assert metrics['split'] == 'test' and metrics['num_examples'] == 40
  assert 0.0 <= metrics['top1'] <= 1.0 and metrics['step'] == 4


def test_rank_samples_the_policy_into_the_weights_csv(trained):
  stdout = run_binary('rank', f'--model_dir={trained}', '--num_samples=2000', '--top=3')
  with open(os.path.join(trained, 'source_class_weights.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8 and rows[0]['name'] in stdout
  assert list(rows[0]) == ['source_class_id', 'name', 'expected_lambda', 'std']


def test_rank_refuses_zero_samples_and_keeps_the_weights_csv(trained):
  """0 samples gave NaN weights, written over the run's ranking."""
  path = os.path.join(trained, 'source_class_weights.csv')
  with open(path, 'rb') as f:
    before = f.read()
  result = subprocess.run(binary_command('rank', f'--model_dir={trained}', '--num_samples=0'),
                          env=QUIET_ENV, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode != 0 and '--num_samples=0 must be >= 1' in result.stderr
  with open(path, 'rb') as f:
    assert f.read() == before


def test_rank_refuses_a_run_that_did_not_learn_lambda(trained, tmp_path):
  """A uniform run's untrained logits were ranked as if learned (every class 0.5)."""
  flagfile = os.path.join(os.path.dirname(trained), 'tiny.flags')
  uniform = str(tmp_path / 'uniform')
  run_binary('train', f'--flagfile={flagfile}', '--mode=uniform', f'--model_dir={uniform}',
             '--train_steps=2', f'--warm_start_from={os.path.dirname(trained)}/pretrain')
  result = subprocess.run(binary_command('rank', f'--model_dir={uniform}'), env=QUIET_ENV,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0 and 'did not learn lambda' in result.stderr
  assert not os.path.exists(os.path.join(uniform, 'source_class_weights.csv'))


def test_exported_saved_model_reloads_in_a_fresh_process_and_matches(trained, tmp_path):
  export_dir = str(tmp_path / 'export')
  run_binary('export', f'--model_dir={trained}', f'--export_dir={export_dir}')
  rng = np.random.default_rng(1)
  images = striped_images(np.array([0, 1, 2, 3]), rng)
  encoded = [records.encode_png(image) for image in images]
  np.save(tmp_path / 'encoded.npy', np.array(encoded, dtype=object), allow_pickle=True)
  examples = [records.make_example(e, 0).SerializeToString() for e in encoded]
  np.save(tmp_path / 'examples.npy', np.array(examples, dtype=object), allow_pickle=True)
  script = f'''
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({export_dir!r})
encoded = np.load({str(tmp_path / 'encoded.npy')!r}, allow_pickle=True).tolist()
examples = np.load({str(tmp_path / 'examples.npy')!r}, allow_pickle=True).tolist()
a = loaded.signatures['serving_default'](images=tf.constant(encoded))['probabilities']
b = loaded.signatures['serving_examples'](examples=tf.constant(examples))['probabilities']
np.save({str(tmp_path / 'served.npy')!r}, np.stack([a.numpy(), b.numpy()]))
empty = loaded.signatures['serving_default'](images=tf.constant([], tf.string))
np.save({str(tmp_path / 'empty.npy')!r}, np.array([empty['probabilities'].shape[0],
        empty['probabilities'].shape[1], empty['classes'].shape[0]]))
'''
  subprocess.run([sys.executable, '-c', script], check=True, timeout=300,
                 env=QUIET_ENV)
  served = np.load(tmp_path / 'served.npy')
  # An empty request is answered with empty outputs, not an error.
  np.testing.assert_array_equal(np.load(tmp_path / 'empty.npy'), [0, served.shape[-1], 0])

  run = runs.restore_for_inference(trained)
  data = run.config.data
  batch = tf.stack([input_pipeline.preprocess_eval(input_pipeline.decode_image(e, 1), data)
                    for e in encoded])
  expected = tf.nn.softmax(run.model.target_logits(batch, training=False)).numpy()
  np.testing.assert_allclose(served[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(served[1], expected, rtol=1e-5, atol=1e-6)

  cli = subprocess.run([sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli',
                        'show', '--dir', export_dir, '--all'],
                       capture_output=True, text=True, check=True, timeout=120)
  assert "signature_def['serving_default']" in cli.stdout
  assert "signature_def['serving_examples']" in cli.stdout
  assert 'DT_STRING' in cli.stdout
