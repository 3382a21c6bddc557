"""Tests for the accuracy benchmark runner (benchmarks/accuracy.py).

The runner runs for real on tiny synthetic scenarios (28x28 noise images
standing in for glyphs, MNIST-5k and Fashion-MNIST) with a suite of a few
steps per run: every method of the registry trains, is evaluated and is
written once; a rerun trains nothing; a changed schedule reruns only what it
changes. The flagfiles in flags/bench/ are checked against the registry.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import load_benchmark
from l2tl_tf import bench_data, lambda_prior, ranking
from l2tl_tf.config import Config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OPTIONS = bench_data.BuildOptions(pool_per_class=4, val_per_class=3, source_shards=2)
PLANTED_IDS = list(range(22, 32))  # 12 glyph + 10 fashion classes, then 10 planted.

accuracy = load_benchmark('accuracy.py')


@pytest.fixture(autouse=True)
def _from_repo_root(monkeypatch):
  # The flagfiles' nested --flagfile lines are relative to the repository root.
  monkeypatch.chdir(REPO_ROOT)
  yield
  accuracy.FLAGS.unparse_flags()


def _stand_in(rng, per_class, names):
  labels = np.repeat(np.arange(len(names)), per_class)
  images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
  return bench_data.labelled(images, rng.permutation(labels), names)


@pytest.fixture(scope='module')
def raw():
  rng = np.random.default_rng(11)
  digits = tuple(str(i) for i in range(10))
  return bench_data.RawArrays({
      'glyphs': _stand_in(rng, 6, tuple('abcdefghijkl')),
      'mnist': _stand_in(rng, 20, digits),
      'fashion_train': _stand_in(rng, 24, bench_data.FASHION_MNIST_CLASS_NAMES),
      'fashion_test': _stand_in(rng, 5, bench_data.FASHION_MNIST_CLASS_NAMES),
  })


def _tiny_suite(**changes) -> 'accuracy.Suite':
  suite = accuracy.Suite(
      'tiny', scenarios=('digits-planted',), split_seeds=(0,), seeds=(0,), ks=(2,),
      methods=tuple(accuracy.METHODS),
      pretrain=accuracy.Schedule(train_steps=3, batch_size=8, learning_rate=0.05,
                                 warmup_steps=1),
      transfer=accuracy.Schedule(train_steps=4, batch_size=4, learning_rate=0.05,
                                 warmup_steps=1, eval_every=2),
      scratch=accuracy.Schedule(train_steps=4, batch_size=4, learning_rate=0.1,
                                warmup_steps=1, eval_every=2),
      datl_pretrain=accuracy.Schedule(train_steps=2, batch_size=8, learning_rate=0.01,
                                      warmup_steps=1),
      build_options=TINY_OPTIONS)
  return dataclasses.replace(suite, **changes)


def _bench(tmp_path, raw, suite):
  return accuracy.Bench(suite, str(tmp_path / 'data'), str(tmp_path / 'runs'),
                        str(tmp_path / 'results'), raw, log=lambda _: None)


class _CountingTrain:
  """Wraps accuracy.train to record the run directories trained."""

  def __init__(self, monkeypatch):
    self.model_dirs = []
    original = accuracy.train

    def counting(config, log, resume=False):
      self.model_dirs.append(os.path.basename(config.model_dir))
      return original(config, log, resume)
    monkeypatch.setattr(accuracy, 'train', counting)


def _progress(lines):
  """The runner's own progress lines among everything it logged."""
  return [line for line in lines if line.startswith('[') or ' finished before' in line]


def test_suite_runs_writes_results_and_resumes(tmp_path, raw, monkeypatch):
  lines = []
  bench = dataclasses.replace(_bench(tmp_path, raw, _tiny_suite()), log=lines.append)
  trained = _CountingTrain(monkeypatch)
  accuracy.run_suite(bench)
  num_jobs = len(accuracy.METHODS)
  progress = _progress(lines)
  assert progress[0] == f'{num_jobs} runs, 0 finished before.'
  assert len(progress) == num_jobs + 1
  for index, (line, method) in enumerate(zip(progress[1:], accuracy.METHODS), start=1):
    assert line.startswith(f'[{index}/{num_jobs}] digits-planted/split0/seed0/k2/{method}: '
                           'test top-1 '), line
    assert line.endswith(' min left.') and 'finished before' not in line, line
  assert progress[-1].endswith('about 0 min left.')
  # One pretraining shared by all methods; DATL trains twice.
  assert sorted(trained.model_dirs) == sorted(
      ['pretrain', 'scratch', 'finetune', 'datl_pretrain', 'datl', 'uniform', 'uniform_ratio',
       'random', 'oracle', 'l2tl', 'l2tl_ours'])

  jobs = accuracy.jobs(bench.suite)
  assert [job.method for job in jobs] == list(accuracy.METHODS)
  paths = [bench.result_path(job) for job in jobs]
  mtimes = [os.path.getmtime(path) for path in paths]
  for job, path in zip(jobs, paths):
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    assert (record['scenario'], record['split'], record['seed'], record['k'],
            record['method']) == ('digits-planted', 0, 0, 2, job.method)
    assert 0.0 <= record['test_top1'] <= 1.0
    assert [step for step, _ in record['val_curve']] == [2, 4]
    assert record['val_top1'] == record['val_curve'][-1][1]
    assert record['seconds'] > 0
    assert ('planted' in record) == accuracy.METHODS[job.method].ranks_sources
  l2tl = accuracy.read_json(paths[[job.method for job in jobs].index('l2tl')])
  assert [p['class_id'] for p in l2tl['planted']] == PLANTED_IDS
  assert len(l2tl['top_sources']) == accuracy.TOP_SOURCES
  assert l2tl['num_source_classes'] == 32
  assert l2tl['planted_in_top20'] == sum(p['rank'] <= 20 for p in l2tl['planted'])
  datl_config = accuracy.read_json(paths[2])['configs'][0]
  assert os.path.exists(datl_config['fixed_source_weights'])

  # A rerun trains nothing and rewrites no result.
  trained.model_dirs.clear()
  lines.clear()
  accuracy.run_suite(bench)
  assert not trained.model_dirs
  progress = _progress(lines)
  assert progress[0] == f'{num_jobs} runs, {num_jobs} finished before; about 0 min to go.'
  assert all(line.endswith('finished before).') for line in progress[1:])
  assert [os.path.getmtime(path) for path in paths] == mtimes

  # Reports: a table row per method, planted ranks, the plots.
  records = accuracy.finished_records(bench)
  assert len(records) == len(jobs)
  reports = accuracy.write_reports(bench, records)
  table = reports['text'].split('## digits-planted', 1)[1].split('## Planted', 1)[0]
  for method in accuracy.METHODS:
    assert sum(line.startswith(f'| {method} | ') for line in table.splitlines()) == 1
  assert '| digits-planted | 2 | l2tl |' in reports['text']
  assert "## Issue 3's bar for `l2tl_ours`" in reports['text']
  top = reports['text'].split('## Top 20 source classes by expected lambda: l2tl', 1)[1]
  assert f'| 1 | {l2tl["top_sources"][0]["class_id"]} |' in top
  with open(reports['json'], encoding='utf-8') as f:
    assert len(json.load(f)['runs']) == len(jobs)
  for name in ('accuracy_vs_k', 'val_curves', 'tiny_top_sources_l2tl_digits-planted.png'):
    assert os.path.getsize(reports[name]) > 1000

  # A changed transfer schedule reruns the target runs, not the pretraining.
  trained.model_dirs.clear()
  changed = _bench(tmp_path, raw, _tiny_suite(
      methods=('finetune',), transfer=dataclasses.replace(bench.suite.transfer, train_steps=6)))
  accuracy.run_suite(changed)
  assert trained.model_dirs == ['finetune']


def test_time_left_counts_unfinished_jobs_at_their_methods_mean():
  jobs = [accuracy.Job('digits', 0, 0, 10, method)
          for method in ('finetune', 'finetune', 'l2tl', 'scratch')]
  seconds = {'finetune': [10.0, 20.0], 'l2tl': [60.0]}
  assert accuracy.time_left(jobs, seconds, set()) == pytest.approx(15 + 15 + 60 + 37.5)
  assert accuracy.time_left(jobs, seconds, {jobs[2].key}) == pytest.approx(15 + 15 + 37.5)
  assert accuracy.time_left(jobs, {}, set()) == 0.0
  record = {**dataclasses.asdict(jobs[2]), 'test_top1': 0.9}
  assert accuracy.record_key(record) == jobs[2].key


def test_planted_ranks():
  ranked = [ranking.RankedClass(i, f'c{i}', 1.0 - 0.1 * r, 0.0)
            for r, i in enumerate([5, 2, 7, 0, 9, 1])]
  assert accuracy.planted_ranks(ranked, [7, 5, 1]) == [3, 1, 6]
  summary = accuracy.source_ranking(ranked, [7, 5, 1])
  assert summary['planted_in_top20'] == 3 and summary['median_planted_rank'] == 3.0
  assert [row['class_id'] for row in summary['top_sources']] == [5, 2, 7, 0, 9, 1]
  assert 'planted' not in accuracy.source_ranking(ranked, [])
  with pytest.raises(ValueError, match='not in the ranking'):
    accuracy.planted_ranks(ranked, [3])


def test_prior_ranking_reads_where_the_lambda_prior_put_the_planted_classes(tmp_path):
  assert accuracy.prior_ranking(str(tmp_path), [7, 5]) == {}
  ranked = [ranking.RankedClass(i, f'c{i}', 1.0 - 0.01 * r, 0.0)
            for r, i in enumerate([5, 2, 7] + list(range(8, 40)))]
  ranking.write_source_class_weights(ranked, str(tmp_path), lambda_prior.PRIOR_FILE)
  prior = accuracy.prior_ranking(str(tmp_path), [7, 5, 30])
  assert prior == {'prior_planted_ranks': [3, 1, 26], 'prior_planted_in_top20': 2}
  assert accuracy.prior_ranking(str(tmp_path), []) == {}


def _row(scenario, k, method, test, std=0.5, **extra):
  return {'scenario': scenario, 'k': k, 'method': method, 'test_top1': test,
          'test_top1_std': std, **extra}


def test_bar_checks_read_the_issue_bar_off_the_rows():
  rows = [_row('digits', 5, 'finetune', 80.0), _row('digits', 5, 'uniform', 81.0),
          _row('digits', 5, 'datl', 82.5), _row('digits', 5, 'l2tl_ours', 82.0),
          _row('digits', 20, 'finetune', 95.0, std=0.4),
          _row('digits', 20, 'l2tl_ours', 94.5, std=0.6),
          _row('digits-planted', 10, 'finetune', 90.0), _row('digits-planted', 10, 'uniform', 91.0),
          _row('digits-planted', 10, 'l2tl_ours', 91.0, planted_in_top20=[10, 7, 9])]
  checks = {(c['check'], c['scenario'], c['k']): c['met']
            for c in accuracy.bar_checks(rows, 'l2tl_ours')}
  assert checks == {
      ('>= finetune + 2', 'digits', 5): True,          # 82.0 >= 82.0
      ('>= uniform', 'digits', 5): True,
      ('>= DATL', 'digits', 5): False,                 # 82.0 < 82.5
      ('>= finetune - 1 std', 'digits', 5): True,
      # k = 20 checks only the std bar; the larger std (0.6) is the slack.
      ('>= finetune - 1 std', 'digits', 20): True,     # 94.5 >= 95.0 - 0.6
      ('planted in top 20, fewest over runs', 'digits-planted', 10): False,  # 7 < 8
      ('>= uniform', 'digits-planted', 10): True,
      ('>= finetune - 1 std', 'digits-planted', 10): True}
  assert accuracy.bar_checks(rows, 'l2tl') == []
  text = '\n'.join(accuracy.bar_lines(rows))
  assert "Issue 3's bar for `l2tl_ours`: 6 of 8 comparisons met" in text
  assert '| >= DATL | digits | 5 | 82.00 | >= 82.50 | **no** |' in text


def test_fingerprints_count_only_settings_away_from_their_defaults():
  """A new flag at its default leaves results valid; any changed setting does not."""
  config = Config(model_dir='/runs/a', train_steps=7)
  values = config.to_dict()
  stored = json.loads(json.dumps(values))
  del stored['policy']['lambda_prior'], stored['jit_compile']  # not there when it ran
  assert accuracy.settings_fingerprint([stored]) == accuracy.fingerprint([config])
  for changed in (dataclasses.replace(config, train_steps=8),
                  dataclasses.replace(config, policy=dataclasses.replace(
                      config.policy, lambda_prior='feature_similarity'))):
    assert accuracy.fingerprint([changed]) != accuracy.fingerprint([config])
  assert accuracy.fingerprint([config, config]) != accuracy.fingerprint([config])


def test_jobs_and_selection():
  suite = accuracy.SUITES['quick']
  methods = [job.method for job in accuracy.jobs(suite) if job.scenario == 'digits']
  assert 'oracle' not in methods and 'l2tl' in methods
  chosen = accuracy.select(suite, scenarios=['digits-planted'], methods=['oracle', 'l2tl'])
  assert chosen.scenarios == ('digits-planted',) and chosen.methods == ('oracle', 'l2tl')
  with pytest.raises(ValueError, match='methods'):
    accuracy.select(suite, methods=['l2tll'])


def test_selection_by_k_seed_and_split_keeps_the_suite_order():
  full = accuracy.SUITES['full']
  chosen = accuracy.select(full, scenarios=['fashion'], ks=[20, 5], seeds=[1], split_seeds=[0])
  assert (chosen.ks, chosen.seeds, chosen.split_seeds) == ((5, 20), (1,), (0,))
  assert {(j.scenario, j.k, j.seed, j.split) for j in accuracy.jobs(chosen)} == {
      ('fashion', 5, 1, 0), ('fashion', 20, 1, 0)}
  assert chosen.name == 'full'  # same folders: a later full run skips these
  for bad, match in (({'ks': [7]}, 'ks'), ({'seeds': [3]}, 'seeds'),
                     ({'split_seeds': [2]}, 'split seeds')):
    with pytest.raises(ValueError, match=match):
      accuracy.select(full, **bad)


def test_full_suite_runs_planted_scenarios_at_k10_only():
  full = accuracy.SUITES['full']
  cells = {(j.scenario, j.k) for j in accuracy.jobs(full)}
  assert {k for s, k in cells if accuracy.is_planted(s)} == {10}
  assert {k for s, k in cells if not accuracy.is_planted(s)} == {5, 10, 20}
  natural_runs = 2 * 2 * 3 * 3 * (len(accuracy.METHODS) - 1)  # no oracle
  planted_runs = 4 * 2 * 3 * 1 * len(accuracy.METHODS)
  assert len(accuracy.jobs(full)) == natural_runs + planted_runs
  mixed = accuracy.select(full, scenarios=['digits', 'fashion-planted'], ks=[5, 10])
  assert {(j.scenario, j.k) for j in accuracy.jobs(mixed)} == {
      ('digits', 5), ('digits', 10), ('fashion-planted', 10)}
  with pytest.raises(ValueError, match='no run'):
    accuracy.select(full, scenarios=['digits-planted'], ks=[5])
  with pytest.raises(ValueError, match='no run'):
    accuracy.select(full, scenarios=['digits'], methods=['oracle'])


@pytest.fixture(scope='module')
def tiny_scenarios(raw, tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp('scenarios'))
  return {name: bench_data.build_scenario(name, out_dir, 0, raw, TINY_OPTIONS,
                                          log=lambda _: None)
          for name in bench_data.SCENARIOS}


def _stages(scenario):
  for method in accuracy.METHODS.values():
    if not method.planted_only or accuracy.is_planted(scenario):
      for stage in method.stages:
        yield method, stage
  yield None, accuracy.PRETRAIN


@pytest.mark.parametrize('scenario', list(bench_data.SCENARIOS))
def test_flagfiles_agree_with_the_registry(scenario, tiny_scenarios):
  """Each flagfile reads the dataset, warm start and weights the runner gives it."""
  described = tiny_scenarios[scenario]
  quick = accuracy.SUITES['quick']
  for method, stage in _stages(scenario):
    path = os.path.join(accuracy.FLAGS_DIR, scenario, stage.flagfile + '.flags')
    config = accuracy.config_from_flagfile(path, {})
    where = f'{path}:'
    data_dir = os.path.join('bench_data', scenario, 'split0')
    assert os.path.dirname(os.path.relpath(config.data.source_train, data_dir)) == \
        os.path.dirname(described['datasets'][stage.source]['pattern']), where
    assert config.data.source_num_classes == 1358 + 10 * accuracy.is_planted(scenario), where
    assert os.path.basename(config.warm_start_from) == stage.warm_start, where
    weighted = method is not None and stage.flagfile == method.datl_weights_for
    assert bool(config.fixed_source_weights) == weighted, where
    schedule = getattr(quick, stage.schedule)
    assert (config.train_steps, config.batch_size, config.optimizer.learning_rate,
            config.optimizer.warmup_steps, config.eval_every) == (
                schedule.train_steps, schedule.batch_size, schedule.learning_rate,
                schedule.warmup_steps, schedule.eval_every), where
    assert (config.model.backbone, config.data.image_size, config.data.num_channels,
            config.data.random_flip) == ('small_cnn', 28, 1, False), where


@pytest.mark.parametrize('stopped_stage', ['pretrain', 'finetune'])
def test_a_run_stopped_by_sigterm_is_not_recorded_and_stops_the_suite(tmp_path, raw,
                                                                       monkeypatch,
                                                                       stopped_stage):
  """SIGTERM ends training early with a checkpoint: that part-trained model must not
  be evaluated and saved as a finished record, nor warm-start later methods."""
  bench = _bench(tmp_path, raw, _tiny_suite(methods=('finetune', 'uniform')))
  original, trained = accuracy.train, []

  def stopped_early(config, log, resume=False):
    result = original(config, log, resume)
    trained.append(os.path.basename(config.model_dir))
    if trained[-1] == stopped_stage:
      result = dataclasses.replace(result, preempted=True)
    return result
  monkeypatch.setattr(accuracy, 'train', stopped_early)
  with pytest.raises(accuracy.Preempted, match='on SIGTERM; nothing was recorded'):
    accuracy.run_suite(bench)
  assert trained[-1] == stopped_stage  # nothing ran after it
  job = accuracy.jobs(bench.suite)[0]
  assert not os.path.exists(bench.result_path(job))
  assert os.path.exists(bench.pretrain_result_path(job)) == (stopped_stage != 'pretrain')


def test_bar_checks_do_not_compare_means_over_different_runs():
  """Mid-suite, l2tl_ours may have three runs of a cell and fine-tuning one: the
  means are not comparable, so the check is listed as pending, not met or missed."""
  rows = [_row('digits', 5, 'finetune', 80.0, runs=1, run_keys=[[0, 0]]),
          _row('digits', 5, 'l2tl_ours', 70.0, runs=3, run_keys=[[0, 0], [0, 1], [0, 2]]),
          _row('digits', 5, 'uniform', 60.0, runs=3, run_keys=[[0, 0], [0, 1], [0, 2]])]
  checks = {c['check']: c['met'] for c in accuracy.bar_checks(rows, 'l2tl_ours')}
  assert checks == {'>= finetune + 2': None, '>= finetune - 1 std': None, '>= uniform': True}
  text = '\n'.join(accuracy.bar_lines(rows))
  assert ('1 of 3 comparisons met (2 not comparable yet: the two methods ran on different '
          '(split, seed) runs)') in text
  assert '| >= finetune + 2 | digits | 5 | 70.00 | >= 82.00 | n/a: 3 runs vs 1' in text


def test_rebuilt_data_invalidates_finished_runs(tmp_path, raw, monkeypatch):
  """Configs hold only paths: a scenario rebuilt with other build options in the
  same folders used to leave the old records (and pretraining) looking finished."""
  trained = _CountingTrain(monkeypatch)
  suite = _tiny_suite(methods=('finetune',))
  accuracy.run_suite(_bench(tmp_path, raw, suite))
  assert sorted(trained.model_dirs) == ['finetune', 'pretrain']
  trained.model_dirs.clear()
  smaller = dataclasses.replace(suite.build_options,
                                pool_per_class=suite.build_options.pool_per_class - 1)
  rebuilt = _bench(tmp_path, raw, dataclasses.replace(suite, build_options=smaller))
  accuracy.run_suite(rebuilt)
  assert sorted(trained.model_dirs) == ['finetune', 'pretrain']
  assert len(accuracy.finished_records(rebuilt)) == 1
