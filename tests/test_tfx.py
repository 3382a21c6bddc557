"""The example TFX pipeline, ImportExampleGen -> Trainer -> Pusher, end to end.

TFX lives in a virtual environment of its own (`.ci/install_tfx.sh`, which
also supplies a newer glibc where the machine's is too old for TFX's wheels);
`L2TL_TFX_PYTHON` names its python. The pipeline runs there under
LocalDagRunner with a SQLite metadata store, with this checkout on PYTHONPATH;
the pushed SavedModel is then loaded and served here, in the main environment.

CI (CI=true) must run this test: without L2TL_TFX_PYTHON it fails there, and
only skips in a development checkout.
"""

import glob
import json
import os
import pathlib
import sqlite3
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from conftest import IMAGE_SIZE, QUIET_ENV, striped_images
from l2tl_tf import records

REPO = pathlib.Path(__file__).resolve().parents[1]
TFX_PYTHON_VARIABLE = 'L2TL_TFX_PYTHON'
GZIP_MAGIC = b'\x1f\x8b'
TARGET_CLASSES, SOURCE_CLASSES = 4, 8


def tfx_python() -> str:
  """The TFX environment's python; fails in CI, skips elsewhere, when missing."""
  path = os.environ.get(TFX_PYTHON_VARIABLE, '')
  if not path:
    message = (f'{TFX_PYTHON_VARIABLE} is unset: install TFX with '
               f'`export {TFX_PYTHON_VARIABLE}="$(bash .ci/install_tfx.sh)"`.')
    if os.environ.get('CI'):
      pytest.fail(f'CI must run the TFX pipeline test, but {message}')
    pytest.skip(message)
  if not os.access(path, os.X_OK):
    pytest.fail(f'{TFX_PYTHON_VARIABLE}={path} is not an executable: rerun .ci/install_tfx.sh.')
  return path


@pytest.fixture(scope='module')
def pipeline_run(tmp_path_factory):
  """Writes tiny target and source data, runs the pipeline, returns its directories."""
  python = tfx_python()
  root = tmp_path_factory.mktemp('tfx')
  rng = np.random.default_rng(0)
  target_labels = np.arange(300) % TARGET_CLASSES
  records.write_image_records(str(root / 'data' / 'train'), striped_images(target_labels, rng),
                              target_labels, num_shards=2,
                              class_names=[f'c{i}' for i in range(TARGET_CLASSES)])
  # data/convert.py's layout: test shards and class_names.txt beside the training shards.
  test_labels = np.arange(40) % TARGET_CLASSES
  records.write_image_records(str(root / 'data' / 'test'), striped_images(test_labels, rng),
                              test_labels)
  source_labels = np.arange(160) % SOURCE_CLASSES
  source = records.write_image_records(str(root / 'source' / 'train'),
                                       striped_images(source_labels, rng), source_labels)
  custom_config = {
      'mode': 'l2tl', 'source_train': source, 'source_num_classes': SOURCE_CLASSES,
      'target_num_classes': TARGET_CLASSES, 'image_size': IMAGE_SIZE, 'num_channels': 1,
      'backbone': 'small_cnn', 'train_steps': 200, 'batch_size': 16, 'steps_per_loop': 100,
      'checkpoint_every': 100, 'warmup_steps': 5, 'learning_rate': 0.05,
      'policy_learning_rate': 0.01, 'random_flip': False, 'shuffle_buffer': 160,
      'eval_batch_size': 64}
  command = [
      python, '-m', 'l2tl_tf.tfx_pipeline', f'--data_root={root / "data"}',
      f'--pipeline_root={root / "pipeline"}', f'--serving_model_dir={root / "serving"}',
      f'--metadata_path={root / "metadata.sqlite"}', f'--custom_config={json.dumps(custom_config)}',
      # Beam workers in processes of their own: they must start through the
      # TFX environment's python (and its glibc) too.
      '--beam_pipeline_args=--direct_running_mode=multi_processing,--direct_num_workers=2']
  env = dict(QUIET_ENV, PYTHONPATH=str(REPO))
  result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True,
                          timeout=900, check=False)
  (root / 'pipeline.log').write_text(result.stdout + result.stderr)
  assert result.returncode == 0, result.stderr[-5000:]
  return root


def test_example_gen_wrote_gzip_splits_the_trainer_read(pipeline_run):
  for split in ('train', 'eval'):
    files = glob.glob(str(pipeline_run / 'pipeline' / 'ImportExampleGen' / 'examples' / '*' /
                          f'Split-{split}' / '*'))
    assert files, split
    with open(files[0], 'rb') as f:
      assert f.read(2) == GZIP_MAGIC
  split_files = glob.glob(str(pipeline_run / 'pipeline' / 'ImportExampleGen' / 'examples' /
                               '*' / 'Split-*' / '*'))
  examples = tf.data.TFRecordDataset(split_files, compression_type='GZIP')
  assert int(examples.reduce(0, lambda count, _: count + 1)) == 300  # the training shards only
  model_runs = glob.glob(str(pipeline_run / 'pipeline' / 'Trainer' / 'model_run' / '*'))
  assert len(model_runs) == 1
  config = json.load(open(os.path.join(model_runs[0], 'config.json')))
  assert config['data']['target_train'].endswith('Split-train/*')
  assert config['data']['target_val'].endswith('Split-eval/*')
  assert tf.train.latest_checkpoint(model_runs[0]).endswith('ckpt-200')
  assert os.path.exists(os.path.join(model_runs[0], 'source_class_weights.csv'))


def test_metadata_store_records_the_three_executions(pipeline_run):
  with sqlite3.connect(pipeline_run / 'metadata.sqlite') as store:
    (executions,) = store.execute('SELECT COUNT(*) FROM Execution').fetchone()
  assert executions == 3


def test_pushed_model_serves_both_signatures(pipeline_run):
  pushed = glob.glob(str(pipeline_run / 'serving' / '*' / 'saved_model.pb'))
  assert len(pushed) == 1
  loaded = tf.saved_model.load(os.path.dirname(pushed[0]))
  labels = np.arange(40) % TARGET_CLASSES
  encoded = [records.encode_png(image)
             for image in striped_images(labels, np.random.default_rng(7))]
  examples = [records.make_example(e, int(label)).SerializeToString()
              for e, label in zip(encoded, labels)]
  by_images = loaded.signatures['serving_default'](images=tf.constant(encoded))
  by_examples = loaded.signatures['serving_examples'](examples=tf.constant(examples))
  probabilities = by_images['probabilities'].numpy()
  assert probabilities.shape == (40, TARGET_CLASSES)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(by_examples['probabilities'], probabilities, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(by_images['classes'], probabilities.argmax(axis=1))
  # The band's row gives the class away: 200 steps learn it (measured: 1.0;
  # after 60 steps BatchNorm's moving statistics still give about chance).
  top1 = float(np.mean(by_images['classes'].numpy() == labels))
  print(f'pushed model top-1 on 40 new images: {top1:.2f}')
  assert top1 >= 0.6, top1
