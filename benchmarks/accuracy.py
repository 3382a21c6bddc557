"""The accuracy benchmark of issue 3: every method on every scenario, resumable.

  python benchmarks/accuracy.py --suite=quick        # < 20 min on 2 cores
  python benchmarks/accuracy.py --suite=heldout      # digits-planted-heldout, k = 10
  python benchmarks/accuracy.py --suite=full         # see benchmarks/README.md; planted at k = 10
  python benchmarks/accuracy.py --suite=quick --methods=finetune,l2tl --scenarios=digits

Each method is a flagfile set in `flags/bench/<scenario>/` run through the
train binary's own flag parser; this runner only overrides what varies between
runs (data paths of the split, --seed, --examples_per_class, run directories)
and the suite's schedule. Per (scenario, split seed, seed) one pretrain run is
shared by every method and k. Test top-1 is read once, after training.

Writes, under --results_dir:
  runs/<suite>/<scenario>/split<s>/seed<seed>/k<k>/<method>.json  one per run
  <suite>.json, <suite>.md                                           aggregates
  <suite>_accuracy_vs_k.png, <suite>_val_curves.png,
  <suite>_top_sources_<method>_<scenario>.png                        plots
A rerun skips every run whose JSON records the same configuration.
"""

import dataclasses
import gc
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import app, flags
import numpy as np

from l2tl_tf import (bench_data, datl, evaluation, files, flag_defs, input_pipeline,
                     lambda_prior, loop, ranking, runs)
from l2tl_tf.config import Config, DataConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'bench-data')
FLAGS_DIR = os.path.join('flags', 'bench')
TOP_SOURCES = 20

FLAGS = flags.FLAGS


# ---------------------------------------------------------------- suites

@dataclasses.dataclass(frozen=True)
class Schedule:
  """The optimisation schedule of one kind of run (overrides the flagfile's)."""
  train_steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  # Validation top-1 every this many steps (0: never); also the loop size.
  eval_every: int = 0

  def flag_overrides(self) -> dict:
    loop_size = self.eval_every or min(self.train_steps, 100)
    return {'train_steps': self.train_steps, 'batch_size': self.batch_size,
            'learning_rate': self.learning_rate, 'warmup_steps': self.warmup_steps,
            'eval_every': self.eval_every, 'steps_per_loop': loop_size,
            'checkpoint_every': self.train_steps}


@dataclasses.dataclass(frozen=True)
class Suite:
  """Which runs a suite holds and the schedules they train with.

  Schedules are chosen on validation data only (benchmarks/README.md).
  """
  name: str
  scenarios: tuple[str, ...]
  split_seeds: tuple[int, ...]
  seeds: tuple[int, ...]
  ks: tuple[int, ...]
  methods: tuple[str, ...]
  # The shared pretraining (N_S steps on the source), per (scenario, split, seed).
  pretrain: Schedule
  # Every target run that starts from the pretraining (fine-tuning, the joint
  # methods, DATL's last stage).
  transfer: Schedule
  # The target run from a random initialisation.
  scratch: Schedule
  # DATL's reweighted continuation of the pretraining.
  datl_pretrain: Schedule
  build_options: bench_data.BuildOptions = bench_data.BuildOptions()
  # The k of the planted scenarios, among `ks`; None: all of `ks`. Issue 3
  # sets k in {5, 10, 20} for the natural scenarios; the planted ones test
  # the ranking and the gap to uniform, which its prototypes measured at 10.
  planted_ks: Optional[tuple[int, ...]] = None

  def scenario_ks(self, scenario: str) -> tuple[int, ...]:
    """The k a scenario runs at in this suite, in `ks` order."""
    if self.planted_ks is None or not is_planted(scenario):
      return self.ks
    return tuple(k for k in self.ks if k in self.planted_ks)


# ---------------------------------------------------------------- methods

@dataclasses.dataclass(frozen=True)
class Job:
  """One benchmarked run: a method on a (scenario, split seed, seed, k) cell."""
  scenario: str
  split: int
  seed: int
  k: int
  method: str

  @property
  def key(self) -> str:
    return f'{self.scenario}/split{self.split}/seed{self.seed}/k{self.k}/{self.method}'


@dataclasses.dataclass(frozen=True)
class Bench:
  """Where a suite reads and writes, and how it logs."""
  suite: Suite
  bench_dir: str
  runs_dir: str
  results_dir: str
  raw: bench_data.RawData
  log: Callable[[str], None] = loop.print_flushed

  def seed_dir(self, scenario: str, split: int, seed: int) -> str:
    return os.path.join(self.runs_dir, self.suite.name, scenario, f'split{split}', f'seed{seed}')

  def model_dir(self, job: Job, stage: str) -> str:
    return os.path.join(self.seed_dir(job.scenario, job.split, job.seed), f'k{job.k}', stage)

  def pretrain_dir(self, job: Job) -> str:
    return os.path.join(self.seed_dir(job.scenario, job.split, job.seed), 'pretrain')

  def result_path(self, job: Job) -> str:
    return os.path.join(self.results_dir, 'runs', self.suite.name, job.key + '.json')

  def pretrain_result_path(self, job: Job) -> str:
    return os.path.join(self.results_dir, 'runs', self.suite.name, job.scenario,
                        f'split{job.split}', f'seed{job.seed}', 'pretrain.json')


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of a method: a flagfile plus what the runner fills in.

  Attributes:
    flagfile: stem of the file in flags/bench/<scenario>/.
    source: the scenario dataset (scenario.json `datasets` key) that feeds
      --source_train.
    schedule: which of the suite's schedules it trains with.
    warm_start: the stage (or 'pretrain') it starts from; '' for none.
  """
  flagfile: str
  source: str = 'source'
  schedule: str = 'transfer'
  warm_start: str = 'pretrain'


@dataclasses.dataclass(frozen=True)
class Method:
  """A benchmarked method: its stages, the last one evaluated.

  Attributes:
    name: the name in results and tables.
    stages: training runs in order; each warm-starts from an earlier one.
    planted_only: runs only on scenarios with planted classes.
    ranks_sources: learns lambda: record planted ranks, the top source classes
      and their image sheet.
    datl_weights_for: the stage that trains on DATL weights, written from the
      pretrain run just before it ('' for none).
  """
  name: str
  stages: tuple[Stage, ...]
  planted_only: bool = False
  ranks_sources: bool = False
  datl_weights_for: str = ''


PRETRAIN = Stage('pretrain', source='pretrain', schedule='pretrain', warm_start='')

# The registry: a new method is one entry here plus its flagfiles.
METHODS = {method.name: method for method in (
    Method('scratch', (Stage('scratch', schedule='scratch', warm_start=''),)),
    Method('finetune', (Stage('finetune'),)),
    Method('datl', (Stage('datl_pretrain', schedule='datl_pretrain'),
                    Stage('datl', warm_start='datl_pretrain')),
           datl_weights_for='datl_pretrain'),
    Method('uniform', (Stage('uniform'),)),
    # l2tl_ours' source-loss scaling on uniform weights: the scaling's share.
    Method('uniform_ratio', (Stage('uniform_ratio'),)),
    Method('random', (Stage('random'),)),
    Method('oracle', (Stage('oracle', source='oracle'),), planted_only=True),
    Method('l2tl', (Stage('l2tl'),), ranks_sources=True),
    Method('l2tl_ours', (Stage('l2tl_ours'),), ranks_sources=True),
)}

# Chosen on validation top-1 of digits split 0, seed 0, k = 10 (benchmarks/README.md).
_PRETRAIN = Schedule(train_steps=2000, batch_size=64, learning_rate=0.1, warmup_steps=200)
_TRANSFER = Schedule(train_steps=300, batch_size=32, learning_rate=0.03, warmup_steps=30,
                     eval_every=30)
_SCRATCH = dataclasses.replace(_TRANSFER, learning_rate=0.1)
_DATL_PRETRAIN = Schedule(train_steps=200, batch_size=64, learning_rate=0.02, warmup_steps=20)
_SCHEDULES = dict(pretrain=_PRETRAIN, transfer=_TRANSFER, scratch=_SCRATCH,
                  datl_pretrain=_DATL_PRETRAIN)

SUITES = {
    'quick': Suite('quick', scenarios=('digits', 'digits-planted'), split_seeds=(0,), seeds=(0,),
                   ks=(10,), methods=tuple(METHODS), **_SCHEDULES),
    # The sharper diagnostic of issue 3: planted classes left out of pretraining.
    'heldout': Suite('heldout', scenarios=('digits-planted-heldout',), split_seeds=(0,),
                     seeds=(0,), ks=(10,), methods=tuple(METHODS), **_SCHEDULES),
    'full': Suite('full', scenarios=tuple(bench_data.SCENARIOS), split_seeds=(0, 1),
                  seeds=(0, 1, 2), ks=(5, 10, 20), methods=tuple(METHODS), planted_ks=(10,),
                  **_SCHEDULES),
}


def select(suite: Suite, scenarios: Sequence[str] = (), methods: Sequence[str] = (),
           ks: Sequence[int] = (), seeds: Sequence[int] = (),
           split_seeds: Sequence[int] = ()) -> Suite:
  """The suite restricted to some of its scenarios, methods, k, seeds, splits.

  Empty keeps all. A selection runs in the suite's own folders, so its runs
  count towards (and are skipped by) a later run of the whole suite.

  Raises:
    ValueError: naming something the suite does not hold, or a selection
      with no run in it (a planted scenario at a k it does not run at).
  """
  for wanted, known, what in ((scenarios, bench_data.SCENARIOS, 'scenario'),
                              (methods, METHODS, 'method'), (ks, suite.ks, 'k'),
                              (seeds, suite.seeds, 'seed'),
                              (split_seeds, suite.split_seeds, 'split seed')):
    unknown = sorted(set(wanted) - set(known))
    if unknown:
      raise ValueError(f'Unknown {what}s {unknown}: pick from {sorted(known)}.')

  def keep(values, wanted):
    return tuple(v for v in values if not wanted or v in wanted)
  chosen = dataclasses.replace(
      suite, scenarios=keep(suite.scenarios, scenarios), methods=keep(suite.methods, methods),
      ks=keep(suite.ks, ks), seeds=keep(suite.seeds, seeds),
      split_seeds=keep(suite.split_seeds, split_seeds))
  if not jobs(chosen):
    runs_at = {s: list(suite.scenario_ks(s)) for s in chosen.scenarios}
    raise ValueError(f'The selection holds no run: the suite runs each scenario at k in '
                     f'{runs_at}, the oracle on planted scenarios only.')
  return chosen


def is_planted(scenario: str) -> bool:
  return bench_data.SCENARIOS[scenario].planted


def jobs(suite: Suite) -> list[Job]:
  """Every run of the suite, grouped so runs sharing a pretraining are adjacent."""
  return [Job(scenario, split, seed, k, method)
          for scenario in suite.scenarios for split in suite.split_seeds
          for seed in suite.seeds for k in suite.scenario_ks(scenario)
          for method in suite.methods
          if is_planted(scenario) or not METHODS[method].planted_only]


# ---------------------------------------------------------------- configs

def config_from_flagfile(flagfile: str, overrides: Mapping[str, Any]) -> Config:
  """The Config of `python -m l2tl_tf.train --flagfile=FILE --name=value ...`.

  Parses with the train binary's flags, so a flagfile means exactly what it
  means to the binary. Nested --flagfile paths in flags/bench/ are relative
  to the repository root: run from there.
  """
  argv = ['l2tl_train', f'--flagfile={flagfile}']
  argv += [f'--{name}={value}' for name, value in overrides.items()]
  return flag_defs.config_from_argv(argv)


def stage_config(bench: Bench, job: Job, stage: Stage, scenario: dict) -> Config:
  """The Config of one stage of `job`: its flagfile, this run's paths and schedule."""
  datasets = scenario['datasets']
  overrides = {
      'model_dir': (bench.pretrain_dir(job) if stage is PRETRAIN
                    else bench.model_dir(job, stage.flagfile)),
      'warm_start_from': _warm_start_dir(bench, job, stage.warm_start),
      'seed': job.seed,
      'source_train': datasets[stage.source]['pattern'],
      'source_num_classes': scenario['source_num_classes'],
      'target_train': datasets['target_train']['pattern'],
      'target_val': datasets['target_val']['pattern'],
      'target_test': datasets['target_test']['pattern'],
      'target_num_classes': scenario['target_num_classes'],
      # The pretraining is shared across k: its k stays the flagfile's.
      **({} if stage is PRETRAIN else {'examples_per_class': job.k}),
      **getattr(bench.suite, stage.schedule).flag_overrides(),
  }
  if stage.flagfile == METHODS[job.method].datl_weights_for:
    overrides['fixed_source_weights'] = os.path.join(
        bench.model_dir(job, 'datl_weights'), ranking.WEIGHTS_FILE)
  path = os.path.join(FLAGS_DIR, job.scenario, stage.flagfile + '.flags')
  return config_from_flagfile(path, overrides)


def _warm_start_dir(bench: Bench, job: Job, warm_start: str) -> str:
  if not warm_start:
    return ''
  return bench.pretrain_dir(job) if warm_start == 'pretrain' else bench.model_dir(job, warm_start)


def fingerprint(configs: Sequence[Config]) -> str:
  """Identifies what a result was computed from: every config in its chain.

  Only settings that differ from their defaults count, so adding a flag whose
  default keeps the old behaviour leaves finished results valid.
  """
  return settings_fingerprint([config.to_dict() for config in configs])


def settings_fingerprint(config_dicts: Sequence[dict]) -> str:
  """`fingerprint` of configs stored as `Config.to_dict()` output (as in records)."""
  defaults = Config().to_dict()
  text = json.dumps([_non_default(values, defaults) for values in config_dicts], sort_keys=True)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]


def _non_default(values: dict, defaults: dict) -> dict:
  """The entries of a config dict that differ from the defaults, section by section."""
  kept = {}
  for key, value in values.items():
    default = defaults.get(key)
    if isinstance(value, dict) and isinstance(default, dict):
      if nested := _non_default(value, default):
        kept[key] = nested
    elif key not in defaults or value != default:
      kept[key] = value
  return kept


# ---------------------------------------------------------------- running

def scenario_info(bench: Bench, name: str, split: int) -> dict:
  """The scenario's description (absolute patterns), building it when needed."""
  directory = bench_data.scenario_dir(bench.bench_dir, name, split)
  bench_data.build_scenario(name, bench.bench_dir, split, bench.raw, bench.suite.build_options,
                            log=bench.log)
  return bench_data.read_scenario(directory)


def read_json(path: str) -> Optional[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, value: dict) -> None:
  """Writes atomically, so an interrupted write never looks finished."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_text_atomically(path, json.dumps(value, indent=1, ensure_ascii=False))


def data_fingerprint(scenario: dict) -> str:
  """Identifies the built data a record was computed from, the same on any machine.

  Configs hold only file paths, so rebuilding a scenario with other build
  options, another builder version or other input files left old records
  looking finished. This covers the build parameters (input files by size,
  not path) and what was built: each dataset's size and classes.
  """
  params = dict(scenario['params'])
  params['inputs'] = {name: [entry[-1] for entry in value] if isinstance(value, list) else value
                      for name, value in params.get('inputs', {}).items()}
  built = {name: {key: dataset.get(key) for key in ('num_examples', 'num_classes',
                                                    'classes_present')}
           for name, dataset in scenario['datasets'].items()}
  text = json.dumps([params, built, scenario.get('planted_class_ids')], sort_keys=True)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]


def finished(path: str, expected_fingerprint: str, expected_data: str) -> Optional[dict]:
  """The record at `path` when it was computed from the expected configs and data."""
  record = read_json(path)
  if (record and record.get('fingerprint') == expected_fingerprint
      and record.get('data_fingerprint') == expected_data):
    return record
  return None


class Preempted(Exception):
  """A run stopped on SIGTERM: its model is part-trained, so nothing is recorded."""


def _finished_training(result: loop.TrainResult, what: str) -> loop.TrainResult:
  """`result`, unless SIGTERM stopped it early (then the suite stops too)."""
  if result.preempted:
    raise Preempted(f'{what} stopped at step {result.steps} on SIGTERM; nothing was recorded '
                    'for it. Rerun the same command to go on.')
  return result


def train(config: Config, log: Callable[[str], None], resume: bool = False) -> loop.TrainResult:
  """Trains one run from scratch, or resumes an interrupted attempt with this config.

  Target runs always restart (their validation curve must be whole); only
  the long pretraining resumes.
  """
  if os.path.exists(config.model_dir) and not (resume and _same_run(config)):
    shutil.rmtree(config.model_dir)
  result = loop.run_training(config, log=lambda line: log('  ' + line))
  gc.collect()
  return result


def _same_run(config: Config) -> bool:
  """Whether model_dir holds an attempt at exactly this config."""
  try:
    return runs.load_config(config.model_dir).to_dict() == config.to_dict()
  except ValueError:
    return False


def ensure_pretrain(bench: Bench, job: Job, scenario: dict) -> Config:
  """Runs (or reuses, or resumes) the pretraining shared by `job`'s cell."""
  config = stage_config(bench, job, PRETRAIN, scenario)
  path = bench.pretrain_result_path(job)
  if finished(path, fingerprint([config]), data_fingerprint(scenario)):
    return config
  bench.log(f'Pretraining {job.scenario} split {job.split} seed {job.seed}.')
  started = time.time()
  result = _finished_training(train(config, bench.log, resume=True),
                              f'Pretraining {job.scenario} split {job.split} seed {job.seed}')
  write_json(path, {'scenario': job.scenario, 'split': job.split, 'seed': job.seed,
                    'seconds': time.time() - started, 'steps': result.steps,
                    'final_metrics': result.final_metrics,
                    'fingerprint': fingerprint([config]),
                    'data_fingerprint': data_fingerprint(scenario), 'config': config.to_dict()})
  return config


def method_configs(bench: Bench, job: Job, scenario: dict) -> list[Config]:
  return [stage_config(bench, job, stage, scenario) for stage in METHODS[job.method].stages]


def run_job(bench: Bench, job: Job, scenario: dict) -> dict:
  """Runs one method on one cell (unless finished) and returns its record."""
  pretrain_config = ensure_pretrain(bench, job, scenario)
  configs = method_configs(bench, job, scenario)
  expected, data = fingerprint([pretrain_config, *configs]), data_fingerprint(scenario)
  record = finished(bench.result_path(job), expected, data)
  if record:
    return record
  bench.log(f'Running {job.key}.')
  method, started, result = METHODS[job.method], time.time(), None
  for stage, config in zip(method.stages, configs):
    if stage.flagfile == method.datl_weights_for:
      datl.write_datl_weights(pretrain_config.model_dir, config,
                              os.path.dirname(config.fixed_source_weights))
    result = _finished_training(train(config, bench.log), f'{job.key} ({stage.flagfile})')
  test = evaluation.evaluate(configs[-1].model_dir, 'test')
  record = make_record(job, result, test['top1'], time.time() - started, scenario,
                       method.ranks_sources)
  record.update(fingerprint=expected, data_fingerprint=data,
                configs=[c.to_dict() for c in configs])
  write_json(bench.result_path(job), record)
  return record


def make_record(job: Job, result: loop.TrainResult, test_top1: float, seconds: float,
                scenario: dict, ranks_sources: bool) -> dict:
  """What one run reports: accuracies, the validation curve and, for L2TL, ranks."""
  curve = [[h['step'], h['eval/val_top1']] for h in result.history if 'eval/val_top1' in h]
  record = {**dataclasses.asdict(job), 'test_top1': test_top1,
            'val_top1': curve[-1][1] if curve else None, 'val_curve': curve,
            'seconds': seconds, 'train_seconds': result.seconds}
  if ranks_sources and result.ranked_classes:
    record.update(source_ranking(result.ranked_classes, scenario['planted_class_ids']))
    record.update(prior_ranking(result.model_dir, scenario['planted_class_ids']))
  return record


def prior_ranking(model_dir: str, planted_ids: Sequence[int]) -> dict:
  """Where --lambda_prior alone put the planted classes, to set against the learned ranks."""
  if not planted_ids or not os.path.exists(os.path.join(model_dir, lambda_prior.PRIOR_FILE)):
    return {}
  ranks = planted_ranks(ranking.read_source_class_weights(model_dir, lambda_prior.PRIOR_FILE),
                        planted_ids)
  return {'prior_planted_ranks': ranks, 'prior_planted_in_top20': _in_top(ranks)}


def _in_top(ranks: Sequence[int]) -> int:
  return sum(r <= TOP_SOURCES for r in ranks)


def planted_ranks(ranked: Sequence[ranking.RankedClass], planted_ids: Sequence[int]) -> list[int]:
  """1-based rank of each planted class (in `planted_ids` order) in `ranked`."""
  position = {row.class_id: rank for rank, row in enumerate(ranked, start=1)}
  missing = [i for i in planted_ids if i not in position]
  if missing:
    raise ValueError(f'Planted classes {missing} are not in the ranking of {len(ranked)}.')
  return [position[i] for i in planted_ids]


def source_ranking(ranked: Sequence[ranking.RankedClass], planted_ids: Sequence[int]) -> dict:
  """The top source classes and, for planted scenarios, where the planted ones rank."""
  summary = {'num_source_classes': len(ranked), 'top_sources': [
      dataclasses.asdict(row) for row in ranked[:TOP_SOURCES]]}
  if planted_ids:
    ranks = planted_ranks(ranked, planted_ids)
    by_id = {row.class_id: row for row in ranked}
    summary['planted'] = [{'class_id': i, 'name': by_id[i].name, 'rank': r,
                           'expected_lambda': by_id[i].expected_lambda}
                          for i, r in zip(planted_ids, ranks)]
    summary['planted_in_top20'] = _in_top(ranks)
    summary['median_planted_rank'] = float(np.median(ranks))
  return summary


def run_suite(bench: Bench) -> None:
  """Runs every unfinished job of the suite, building scenarios as needed.

  Logs where it stands, so a multi-hour suite can be watched: at the start,
  how many runs are finished; after each job, its place in the suite, its
  test top-1 and seconds, and the estimated time left (`time_left`).
  """
  suite_jobs = jobs(bench.suite)
  finished_before = finished_records(bench)
  done = {record_key(record) for record in finished_before}
  seconds: dict[str, list[float]] = {}
  for record in finished_before:
    seconds.setdefault(record['method'], []).append(record['seconds'])
  left = time_left(suite_jobs, seconds, done)
  bench.log(f'{len(suite_jobs)} runs, {len(done)} finished before'
            + (f'; about {left / 60:.0f} min to go.' if seconds else '.'))
  scenarios = {}
  for index, job in enumerate(suite_jobs, start=1):
    cell = (job.scenario, job.split)
    if cell not in scenarios:
      scenarios[cell] = scenario_info(bench, job.scenario, job.split)
    record = run_job(bench, job, scenarios[cell])
    line = (f'[{index}/{len(suite_jobs)}] {job.key}: test top-1 '
            f'{100 * record["test_top1"]:.1f} ({record["seconds"]:.0f} s')
    if job.key in done:
      line += ', finished before)'
    else:
      done.add(job.key)
      seconds.setdefault(job.method, []).append(record['seconds'])
      line += f'); about {time_left(suite_jobs[index:], seconds, done) / 60:.0f} min left'
    bench.log(line + '.')


def record_key(record: Mapping[str, Any]) -> str:
  """The key of the job a run record belongs to."""
  return Job(*(record[field.name] for field in dataclasses.fields(Job))).key


def time_left(remaining: Sequence[Job], seconds: Mapping[str, Sequence[float]],
              done: set[str]) -> float:
  """Estimated seconds for the jobs in `remaining` that are not in `done`.

  Each at the mean time of its method's finished runs (the mean over methods
  for a method with none yet). Pretrainings still to train are not counted:
  an estimate to watch, not a promise.
  """
  means = {method: float(np.mean(values)) for method, values in seconds.items() if values}
  fallback = float(np.mean(list(means.values()))) if means else 0.0
  return sum(means.get(job.method, fallback) for job in remaining if job.key not in done)


def finished_records(bench: Bench) -> list[dict]:
  """Records of the suite's jobs that are finished with the current configs.

  Only reads: a scenario that was never built has no finished job.
  """
  records, scenarios = [], {}
  for job in jobs(bench.suite):
    directory = bench_data.scenario_dir(bench.bench_dir, job.scenario, job.split)
    if (job.scenario, job.split) not in scenarios:
      built = os.path.exists(os.path.join(directory, bench_data.SCENARIO_FILE))
      scenarios[job.scenario, job.split] = bench_data.read_scenario(directory) if built else None
    scenario = scenarios[job.scenario, job.split]
    if scenario is None:
      continue
    configs = [stage_config(bench, job, PRETRAIN, scenario),
               *method_configs(bench, job, scenario)]
    record = finished(bench.result_path(job), fingerprint(configs), data_fingerprint(scenario))
    if record:
      records.append(record)
  return records


# ---------------------------------------------------------------- aggregates

def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  return (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def aggregate(records: Sequence[dict]) -> list[dict]:
  """Mean and std over splits and seeds per (scenario, k, method), in run order."""
  groups = {}
  for record in records:
    groups.setdefault((record['scenario'], record['k'], record['method']), []).append(record)
  rows = []
  for (scenario, k, method), group in groups.items():
    test, test_std = _mean_std([100 * r['test_top1'] for r in group])
    vals = [100 * r['val_top1'] for r in group if r['val_top1'] is not None]
    val, val_std = _mean_std(vals) if vals else (None, None)
    row = {'scenario': scenario, 'k': k, 'method': method, 'runs': len(group),
           'run_keys': sorted([r['split'], r['seed']] for r in group),
           'test_top1': test, 'test_top1_std': test_std, 'val_top1': val,
           'val_top1_std': val_std,
           'seconds': float(np.mean([r['seconds'] for r in group]))}
    planted = [r for r in group if 'planted' in r]
    if planted:
      row['planted_in_top20'] = [r['planted_in_top20'] for r in planted]
      row['median_planted_rank'] = [r['median_planted_rank'] for r in planted]
      row['prior_planted_in_top20'] = [r.get('prior_planted_in_top20') for r in planted]
    rows.append(row)
  return rows


def markdown(suite: Suite, rows: Sequence[dict], seconds: float,
             rankings: Sequence[dict] = ()) -> str:
  """Test top-1 per scenario (rows: methods, columns: k), planted ranks, top sources.

  Args:
    suite: the suite the rows come from.
    rows: `aggregate` output.
    seconds: time the runs took.
    rankings: run records whose top source classes to list (Table 4).
  """
  lines = [f'# Accuracy benchmark, suite `{suite.name}`', '',
           f'Test top-1 (%), mean +- std over split seeds {list(suite.split_seeds)} x seeds '
           f'{list(suite.seeds)} (runs in brackets); k = target training examples per class. '
           f'Transfer: {suite.transfer.train_steps} steps at B_T = {suite.transfer.batch_size}, '
           f'lr {suite.transfer.learning_rate} (scratch {suite.scratch.learning_rate}); '
           f'pretraining: {suite.pretrain.train_steps} steps at {suite.pretrain.batch_size}. '
           f'Time of these runs, pretraining included: {seconds / 60:.1f} min.']
  by_key = {(r['scenario'], r['k'], r['method']): r for r in rows}
  for scenario in dict.fromkeys(r['scenario'] for r in rows):
    ks = sorted({r['k'] for r in rows if r['scenario'] == scenario})
    lines += ['', f'## {scenario}', '', '| method | ' + ' | '.join(f'k={k}' for k in ks) + ' |',
              '|---|' + '---|' * len(ks)]
    for method in dict.fromkeys(r['method'] for r in rows if r['scenario'] == scenario):
      cells = []
      for k in ks:
        row = by_key.get((scenario, k, method))
        cells.append(f'{row["test_top1"]:.1f} +- {row["test_top1_std"]:.1f} ({row["runs"]})'
                     if row else '')
      lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  ranked = [r for r in rows if 'planted_in_top20' in r]
  if ranked:
    lines += ['', f'## Planted classes ranked by expected lambda (10 planted among all source '
                  'classes)', '',
              f'| scenario | k | method | planted in top {TOP_SOURCES} (mean; min) | '
              f'median planted rank (mean) | the lambda prior alone: in top {TOP_SOURCES} |',
              '|---|---|---|---|---|---|']
    for r in ranked:
      prior = [n for n in r.get('prior_planted_in_top20', []) if n is not None]
      lines.append(f'| {r["scenario"]} | {r["k"]} | {r["method"]} | '
                   f'{np.mean(r["planted_in_top20"]):.1f}; {min(r["planted_in_top20"])} | '
                   f'{np.mean(r["median_planted_rank"]):.0f} | '
                   f'{f"{np.mean(prior):.1f}; {min(prior)}" if prior else "-"} |')
  lines += bar_lines(rows)
  for record in rankings:
    lines += ['', f'## Top {len(record["top_sources"])} source classes by expected lambda: '
                  f'{record["method"]}, {record["scenario"]} split {record["split"]} seed '
                  f'{record["seed"]} k={record["k"]}', '',
              '| rank | class id | name | expected lambda | std |', '|---|---|---|---|---|']
    for rank, row in enumerate(record['top_sources'], start=1):
      name = row['name'].replace('|', '\\|')
      lines.append(f'| {rank} | {row["class_id"]} | {name} | '
                   f'{row["expected_lambda"]:.3f} | {row["std"]:.3f} |')
  return '\n'.join(lines) + '\n'


# Issue 3's bar, read off the aggregated rows for each method that learns lambda.
BAR_METHODS = ('l2tl', 'l2tl_ours')
BAR_PLANTED_IN_TOP = 8
BAR_NATURAL_MARGIN = 2.0
BAR_NATURAL_MAX_K = 10


def bar_checks(rows: Sequence[dict], method: str) -> list[dict]:
  """Every comparison of issue 3's bar for `method`, each with its numbers and verdict.

  Planted scenarios: at least 8 planted classes in the top 20 in every run,
  and mean test top-1 >= uniform's. Natural scenarios at k <= 10: >=
  fine-tuning + 2, >= uniform, >= DATL. Everywhere: not below fine-tuning by
  more than one standard deviation (the larger of the two methods' stds over
  their runs). A comparison whose reference method has no row is left out;
  one whose methods ran on different (split, seed) runs, as in a suite still
  running, is listed with `met` None: means over different runs do not compare.
  """
  by_key = {(r['scenario'], r['k'], r['method']): r for r in rows}
  checks = []

  def compare(row, name, reference, margin=0.0, slack=0.0):
    ref = by_key.get((row['scenario'], row['k'], reference))
    if ref is None:
      return
    threshold = ref['test_top1'] + margin - slack
    same_runs = row.get('run_keys') == ref.get('run_keys')
    checks.append({'check': name, 'scenario': row['scenario'], 'k': row['k'],
                   'value': row['test_top1'], 'threshold': threshold,
                   'met': bool(row['test_top1'] >= threshold) if same_runs else None,
                   'runs': (row.get('runs'), ref.get('runs'))})
  for row in (r for r in rows if r['method'] == method):
    if is_planted(row['scenario']):
      if 'planted_in_top20' in row:
        fewest = min(row['planted_in_top20'])
        checks.append({'check': f'planted in top {TOP_SOURCES}, fewest over runs',
                       'scenario': row['scenario'], 'k': row['k'], 'value': fewest,
                       'threshold': BAR_PLANTED_IN_TOP,
                       'met': bool(fewest >= BAR_PLANTED_IN_TOP)})
      compare(row, '>= uniform', 'uniform')
    elif row['k'] <= BAR_NATURAL_MAX_K:
      compare(row, f'>= finetune + {BAR_NATURAL_MARGIN:g}', 'finetune', BAR_NATURAL_MARGIN)
      compare(row, '>= uniform', 'uniform')
      compare(row, '>= DATL', 'datl')
    finetune = by_key.get((row['scenario'], row['k'], 'finetune'))
    if finetune is not None:
      compare(row, '>= finetune - 1 std', 'finetune',
              slack=max(finetune['test_top1_std'], row['test_top1_std']))
  return checks


def bar_lines(rows: Sequence[dict]) -> list[str]:
  """The bar's comparisons as a markdown table (nothing when no method to check ran)."""
  lines = []
  for method in BAR_METHODS:
    checks = bar_checks(rows, method)
    if not checks:
      continue
    met = sum(c['met'] is True for c in checks)
    pending = sum(c['met'] is None for c in checks)
    title = f'## Issue 3\'s bar for `{method}`: {met} of {len(checks)} comparisons met'
    if pending:
      title += (f' ({pending} not comparable yet: the two methods ran on different '
                '(split, seed) runs)')
    lines += ['', title, '', '| check | scenario | k | value | needs | met |',
              '|---|---|---|---|---|---|']
    for c in checks:
      value, needed = (f'{c["value"]:.2f}', f'{c["threshold"]:.2f}') if isinstance(
          c['value'], float) else (str(c['value']), str(c['threshold']))
      verdict = ('yes' if c['met'] else '**no**') if c['met'] is not None else (
          f'n/a: {c["runs"][0]} runs vs {c["runs"][1]}, not the same ones')
      lines.append(f'| {c["check"]} | {c["scenario"]} | {c["k"]} | {value} | >= {needed} | '
                   f'{verdict} |')
  return lines


# ---------------------------------------------------------------- plots

def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _method_colors(rows: Sequence[dict]) -> dict:
  """One colour per method, the same in every panel and plot."""
  return {m: f'C{i % 10}' for i, m in enumerate(dict.fromkeys(r['method'] for r in rows))}


def _save(figure, path: str) -> str:
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  _pyplot().close(figure)
  return path


def plot_accuracy_vs_k(rows: Sequence[dict], path: str) -> str:
  """Test top-1 against k per method, one panel per scenario (the paper's Fig. 3)."""
  plt, colors = _pyplot(), _method_colors(rows)
  scenarios = list(dict.fromkeys(r['scenario'] for r in rows))
  figure, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 3.8),
                              squeeze=False)
  for axis, scenario in zip(axes[0], scenarios):
    for method in dict.fromkeys(r['method'] for r in rows if r['scenario'] == scenario):
      points = sorted((r['k'], r['test_top1'], r['test_top1_std']) for r in rows
                      if r['scenario'] == scenario and r['method'] == method)
      ks, means, stds = zip(*points)
      axis.errorbar(ks, means, yerr=stds, marker='o', capsize=3, label=method,
                    color=colors[method])
    axis.set(title=scenario, xlabel='k (target examples per class)', ylabel='test top-1 (%)')
    axis.set_xticks(sorted({r['k'] for r in rows}))
    axis.legend(fontsize='small')
  return _save(figure, path)


def plot_val_curves(records: Sequence[dict], path: str) -> str:
  """Mean validation top-1 against step per method, a panel per (scenario, k) (Fig. 4)."""
  plt, colors = _pyplot(), _method_colors(records)
  panels = list(dict.fromkeys((r['scenario'], r['k']) for r in records if r['val_curve']))
  columns = min(len(panels), 3) or 1
  rows = -(-len(panels) // columns) or 1
  figure, axes = plt.subplots(rows, columns, figsize=(4.8 * columns, 3.6 * rows), squeeze=False)
  for axis, (scenario, k) in zip(axes.flat, panels):
    group = [r for r in records if (r['scenario'], r['k']) == (scenario, k) and r['val_curve']]
    for method in dict.fromkeys(r['method'] for r in group):
      curves = [np.array(r['val_curve']) for r in group if r['method'] == method]
      length = min(len(c) for c in curves)
      axis.plot(curves[0][:length, 0], 100 * np.mean([c[:length, 1] for c in curves], axis=0),
                label=method, color=colors[method])
    axis.set(title=f'{scenario}, k={k}', xlabel='step', ylabel='validation top-1 (%)')
    axis.legend(fontsize='small')
  for axis in list(axes.flat)[len(panels):]:
    axis.axis('off')
  return _save(figure, path)


def source_examples(pattern: str, class_ids: Sequence[int], per_class: int) -> dict:
  """Up to `per_class` decoded [H, W] uint8 images of each class, in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  wanted = tf.constant(list(class_ids), tf.int32)
  dataset = input_pipeline.raw_dataset(pattern, DataConfig(), 0).filter(
      lambda _, label: tf.reduce_any(tf.equal(label, wanted)))
  found = {int(i): [] for i in class_ids}
  for encoded, label in dataset.as_numpy_iterator():
    if len(found[int(label)]) < per_class:
      found[int(label)].append(input_pipeline.decode_image(encoded, 1).numpy()[..., 0])
      if all(len(images) == per_class for images in found.values()):
        break
  return found


def plot_top_sources(record: dict, source_pattern: str, path: str, per_class: int = 6) -> str:
  """A sheet of the top source classes: sample images, names and weights (Fig. 2, Table 4)."""
  plt = _pyplot()
  top = record['top_sources']
  images = source_examples(source_pattern, [row['class_id'] for row in top], per_class)
  planted = {p['class_id'] for p in record.get('planted', [])}
  columns = 4
  figure, axes = plt.subplots(-(-len(top) // columns), columns,
                              figsize=(3.2 * columns, 1.3 * -(-len(top) // columns)),
                              squeeze=False)
  for rank, (axis, row) in enumerate(zip(axes.flat, top), start=1):
    strip = images[row['class_id']]
    if strip:
      axis.imshow(np.concatenate(strip, axis=1), cmap='gray')
    marker = ' (planted)' if row['class_id'] in planted else ''
    axis.set_title(f'{rank}. {row["name"]} (id {row["class_id"]}){marker}\n'
                   f'lambda {row["expected_lambda"]:.3f} +- {row["std"]:.3f}', fontsize=7)
    axis.axis('off')
  for axis in list(axes.flat)[len(top):]:
    axis.axis('off')
  figure.suptitle(f'{record["method"]}: top {len(top)} source classes, {record["scenario"]} '
                  f'split {record["split"]} seed {record["seed"]} k={record["k"]}', fontsize=9)
  return _save(figure, path)


def run_seconds(bench: Bench, records: Sequence[dict]) -> float:
  """Time the records took, each shared pretraining counted once."""
  pretrains = {bench.pretrain_result_path(Job(r['scenario'], r['split'], r['seed'], r['k'],
                                              r['method'])) for r in records}
  return (sum(r['seconds'] for r in records)
          + sum((read_json(path) or {}).get('seconds', 0.0) for path in pretrains))


def write_reports(bench: Bench, records: Sequence[dict]) -> dict:
  """Writes <suite>.json, <suite>.md and the plots; returns the text and the paths."""
  suite, out = bench.suite, bench.results_dir
  os.makedirs(out, exist_ok=True)
  rows = aggregate(records)
  sheets, seconds = _sheet_records(records), run_seconds(bench, records)
  text = markdown(suite, rows, seconds, sheets)
  paths = {'json': os.path.join(out, f'{suite.name}.json'),
           'markdown': os.path.join(out, f'{suite.name}.md')}
  write_json(paths['json'], {'suite': dataclasses.asdict(suite), 'seconds': seconds,
                             'summary': rows, 'runs': list(records)})
  with open(paths['markdown'], 'w', encoding='utf-8') as f:
    f.write(text)
  paths['accuracy_vs_k'] = plot_accuracy_vs_k(
      rows, os.path.join(out, f'{suite.name}_accuracy_vs_k.png'))
  paths['val_curves'] = plot_val_curves(
      records, os.path.join(out, f'{suite.name}_val_curves.png'))
  for record in sheets:
    scenario = bench_data.read_scenario(
        bench_data.scenario_dir(bench.bench_dir, record['scenario'], record['split']))
    name = f'{suite.name}_top_sources_{record["method"]}_{record["scenario"]}.png'
    paths[name] = plot_top_sources(record, scenario['datasets']['source']['pattern'],
                                   os.path.join(out, name))
  return {'text': text, **paths}


def _sheet_records(records: Sequence[dict]) -> list[dict]:
  """Per (ranking method, scenario), the first run at the middle k."""
  chosen = {}
  for record in records:
    if 'top_sources' not in record:
      continue
    key = (record['method'], record['scenario'])
    best = chosen.get(key)
    if best is None or abs(record['k'] - 10) < abs(best['k'] - 10):
      chosen[key] = record
  return list(chosen.values())


# ---------------------------------------------------------------- binary

flags.DEFINE_enum('suite', 'quick', list(SUITES), 'Which suite to run.')
flags.DEFINE_list('methods', [], f'Only these methods (default: the suite\'s), of {list(METHODS)}.')
flags.DEFINE_list('scenarios', [], 'Only these scenarios (default: the suite\'s).')
flags.DEFINE_list('ks', [], 'Only these k (default: the suite\'s).')
flags.DEFINE_list('seeds', [], 'Only these seeds (default: the suite\'s).')
flags.DEFINE_list('split_seeds', [], 'Only these split seeds (default: the suite\'s).')
flags.DEFINE_string('bench_dir', os.path.join(REPO_ROOT, 'bench_data'),
                    'Scenario data (built here when missing).')
flags.DEFINE_string('runs_dir', os.path.join(REPO_ROOT, 'runs', 'bench'),
                    'Run directories (checkpoints).')
flags.DEFINE_string('results_dir', os.path.join(REPO_ROOT, 'benchmarks', 'results'),
                    'Result JSONs, tables and plots.')
flags.DEFINE_string('glyphs', os.path.join(SHARED_DATA, 'glyphs.npz'), 'Printed glyphs (.npz).')
flags.DEFINE_string('mnist', os.path.join(SHARED_DATA, 'mnist5k.npz'), 'MNIST-5k (.npz).')
flags.DEFINE_string('fashion_dir', bench_data.DEFAULT_FASHION_DIR,
                    'Folder of the Fashion-MNIST IDX .gz files.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    suite = select(SUITES[FLAGS.suite], FLAGS.scenarios, FLAGS.methods,
                   _ints('--ks', FLAGS.ks), _ints('--seeds', FLAGS.seeds),
                   _ints('--split_seeds', FLAGS.split_seeds))
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  paths = [os.path.abspath(p) for p in (FLAGS.bench_dir, FLAGS.runs_dir, FLAGS.results_dir)]
  bench = Bench(SUITES[FLAGS.suite], *paths,
                bench_data.RawFiles(FLAGS.glyphs, FLAGS.mnist, FLAGS.fashion_dir))
  # The flagfiles' nested --flagfile lines are relative to the repository root.
  os.chdir(REPO_ROOT)
  _quiet_tensorflow()
  started = time.time()
  try:
    run_suite(dataclasses.replace(bench, suite=suite))
  except Preempted as stopped:
    print(stopped, flush=True)
    sys.exit(loop.PREEMPTED_EXIT_CODE)  # as l2tl-train's: rerun the command to go on
  # The reports cover every finished run of the suite, not only this selection.
  records = finished_records(bench)
  if not records:
    print('No finished run to report yet.')
    return
  reports = write_reports(bench, records)
  print(reports['text'])
  print(f'{len(records)} finished runs; this invocation took '
        f'{(time.time() - started) / 60:.1f} min. Wrote {reports["markdown"]} and its plots.',
        flush=True)


def _ints(flag: str, values: Sequence[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError as error:
    raise ValueError(f'{flag} takes integers, got {list(values)}.') from error


def _quiet_tensorflow():
  """Every run builds new tf.functions, so TF's retracing warnings are expected noise."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.get_logger().setLevel('ERROR')


if __name__ == '__main__':
  app.run(main)
