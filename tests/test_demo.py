"""The demo binary end to end on tiny settings, and its flagfile."""

import os
import pathlib
import subprocess
import sys

import pytest

from l2tl_tf import demo_benchmark, demo_data, loop

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


def fake_data(tmp_path):
  return demo_data.DemoData(
      source_train=str(tmp_path / 'source-*'), target_train=str(tmp_path / 'train-*'),
      target_test=str(tmp_path / 'test-*'), source_num_classes=5,
      source_class_names=list('abcde'), target_num_classes=10)


def test_a_stage_stopped_by_sigterm_stops_the_demo(tmp_path, monkeypatch):
  """Later stages warm-started from a half-trained pretraining and were scored as done."""
  monkeypatch.setattr(demo_data, 'build_demo_data', lambda *a, **k: fake_data(tmp_path))
  started = []

  def stopped(config, log):
    started.append(config.mode.value)
    return loop.TrainResult(config.model_dir, 3, {}, 1.0, preempted=True)
  monkeypatch.setattr(loop, 'run_training', stopped)
  with pytest.raises(demo_benchmark.Preempted, match='SIGTERM stopped the pretrain run at '
                     'step 3'):
    demo_benchmark.run_demo(demo_benchmark.DemoSettings(out_dir=str(tmp_path)), log=print)
  assert started == ['pretrain']


def test_runs_on_other_demo_data_are_refused_not_rescored(tmp_path):
  """Changing --test_per_class rebuilt the data under finished runs, which were reused."""
  (tmp_path / 'runs' / 'scratch').mkdir(parents=True)
  with pytest.raises(ValueError, match='holds runs trained on other demo data.*delete'):
    demo_benchmark.run_demo(demo_benchmark.DemoSettings(out_dir=str(tmp_path)), log=print)
  assert not (tmp_path / 'data' / 'manifest.json').exists()


@pytest.mark.parametrize('changes, message', [
    (dict(transfer_steps=1), '--transfer_steps=1 must be >= 2'),
    (dict(batch_size=0), '--batch_size=0 must be > 0'),
    (dict(learning_rate=-0.1), '--learning_rate=-0.1 must be > 0'),
])
def test_settings_that_cannot_train_are_refused_before_the_data_build(tmp_path, changes,
                                                                      message):
  settings = demo_benchmark.DemoSettings(out_dir=str(tmp_path), **changes)
  with pytest.raises(ValueError, match=message):
    demo_benchmark.run_demo(settings, log=print)
  assert not list(tmp_path.iterdir())


def test_resumed_stages_say_their_time_is_this_invocations():
  report = demo_benchmark.DemoReport(
      accuracies=dict(scratch=0.9, finetune=0.9, l2tl=0.9),
      seconds=dict(pretrain=5, scratch=3, finetune=4, l2tl=6), top_classes=[],
      export_dir='x', source_num_classes=5, lambda_range=(0.4, 0.6), resumed=('scratch',))
  table = demo_benchmark.format_report(report, demo_benchmark.DemoSettings())
  assert '| scratch | 90.0 | 3 (resumed: this invocation only) |' in table
  assert '| finetune | 90.0 | 4 |' in table
