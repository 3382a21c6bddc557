"""The demo binary end to end on tiny settings, and its flagfile."""

import os
import pathlib
import subprocess
import sys

from l2tl_tf import demo_benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_demo(*args):
  return subprocess.run([sys.executable, '-m', 'l2tl_tf.demo', *args], capture_output=True,
                        text=True, timeout=600, check=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')).stdout


def test_demo_prints_its_table_ranking_and_exports(tmp_path):
  stdout = run_demo(f'--out_dir={tmp_path}', '--pretrain_steps=20', '--transfer_steps=10',
                    '--images_per_class=4', '--test_per_class=20',
                    '--val_examples_per_class=5', '--batch_size=8')
  for method in demo_benchmark.METHODS:
    assert f'| {method} |' in stdout
  assert 'Top source classes by expected lambda' in stdout
  assert stdout.count(' lambda ') >= 10
  assert (tmp_path / 'runs' / 'l2tl' / 'export' / 'saved_model.pb').exists()
  assert (tmp_path / 'runs' / 'l2tl' / 'source_class_weights.csv').exists()


def test_demo_flagfile_spells_out_the_defaults():
  from_file = run_demo(f'--flagfile={REPO / "flags" / "demo" / "demo.flags"}', '--dry_run')
  assert from_file.strip() == str(demo_benchmark.DemoSettings())
