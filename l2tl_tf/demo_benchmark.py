"""The embedded demo: scratch vs fine-tuning vs L2TL on offline data.

Builds the glyphs -> MNIST benchmark of `demo_data.py`, pretrains g and h_S on
the glyphs, then trains three target models at k examples per class and
reports their test accuracy (read once, after training) and the source classes
that L2TL weighted highest. Every run goes through `loop.run_training` and
`evaluation.evaluate`, the code paths of the binaries.
"""

import dataclasses
import os
import time
from typing import Callable

import tensorflow as tf

from l2tl_tf import demo_data, evaluation, loop, serving
from l2tl_tf.config import (Config, DataConfig, Mode, ModelConfig, OptimizerConfig,
                            PolicyConfig)

METHODS = ('scratch', 'finetune', 'l2tl')


class Preempted(Exception):
  """SIGTERM stopped a stage: later stages must not start from its partial run."""


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  """Sizes and schedules of the demo (defaults: 4-8 minutes on 2 cores, measured)."""
  out_dir: str = 'l2tl_demo'
  seed: int = 0
  examples_per_class: int = 10
  val_examples_per_class: int = 50
  images_per_class: int = 60
  test_per_class: int = 250
  pretrain_steps: int = 2_000
  pretrain_batch_size: int = 64
  transfer_steps: int = 1_000
  batch_size: int = 32
  learning_rate: float = 0.05
  source_batch_multiplier: int = 5
  policy_learning_rate: float = 1e-4
  num_lambda_levels: int = 11


@dataclasses.dataclass(frozen=True)
class DemoReport:
  """Test accuracy per method, L2TL's top source classes, and where things are."""
  accuracies: dict
  seconds: dict
  top_classes: list
  export_dir: str
  source_num_classes: int
  # (lowest, highest) expected lambda over all source classes.
  lambda_range: tuple
  # Stages resumed from a checkpoint: their seconds cover this invocation only.
  resumed: tuple = ()


def check_settings(settings: DemoSettings) -> None:
  """Refuses settings that cannot train, naming the demo's flags, before any data is built.

  Without it `--transfer_steps=1` failed after the data build and the whole
  pretraining, with a message about `--warmup_steps`, a flag the demo lacks.
  """
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if field.name != 'out_dir' and value < (0 if field.name == 'seed' else 1e-12):
      raise ValueError(f'--{field.name}={value} must be '
                       f'{">= 0" if field.name == "seed" else "> 0"}.')
  for name in ('pretrain_steps', 'transfer_steps'):
    if getattr(settings, name) < 2:
      raise ValueError(f'--{name}={getattr(settings, name)} must be >= 2: a tenth of the steps '
                       '(at least one) is warm-up.')
  if settings.num_lambda_levels < 2:
    raise ValueError(f'--num_lambda_levels={settings.num_lambda_levels} must be >= 2.')


def demo_configs(settings: DemoSettings, data: demo_data.DemoData) -> dict[str, Config]:
  """The pretrain run and one run per method, sharing every common setting."""
  data_config = DataConfig(
      source_train=data.source_train, target_train=data.target_train,
      target_test=data.target_test, source_num_classes=data.source_num_classes,
      target_num_classes=data.target_num_classes, image_size=demo_data.IMAGE_SIZE,
      num_channels=1, examples_per_class=settings.examples_per_class,
      val_examples_per_class=settings.val_examples_per_class, train_crop='pad_crop',
      # Flipped digits and characters are other characters.
      random_flip=False, shuffle_buffer=20_000)
  runs_dir = os.path.join(settings.out_dir, 'runs')
  pretrain_dir = os.path.join(runs_dir, 'pretrain')

  def config(mode: Mode, steps: int, batch_size: int, warm_start: str) -> Config:
    return Config(
        mode=mode, model_dir=os.path.join(runs_dir, mode.value), warm_start_from=warm_start,
        seed=settings.seed, train_steps=steps, batch_size=batch_size,
        source_batch_multiplier=settings.source_batch_multiplier, steps_per_loop=100,
        checkpoint_every=500, data=data_config, model=ModelConfig(backbone='small_cnn'),
        policy=PolicyConfig(learning_rate=settings.policy_learning_rate,
                            num_lambda_levels=settings.num_lambda_levels),
        optimizer=OptimizerConfig(learning_rate=settings.learning_rate,
                                  warmup_steps=max(steps // 10, 1)))

  transfer = settings.transfer_steps
  return {
      'pretrain': config(Mode.PRETRAIN, settings.pretrain_steps, settings.pretrain_batch_size,
                         ''),
      'scratch': config(Mode.SCRATCH, transfer, settings.batch_size, ''),
      'finetune': config(Mode.FINETUNE, transfer, settings.batch_size, pretrain_dir),
      'l2tl': config(Mode.L2TL, transfer, settings.batch_size, pretrain_dir),
  }


def run_demo(settings: DemoSettings,
             log: Callable[[str], None] = loop.print_flushed) -> DemoReport:
  """Builds the data, trains every method, evaluates on test, exports L2TL.

  Raises:
    Preempted: SIGTERM stopped a stage (its checkpoint is saved; rerun to go on).
    ValueError: `out_dir/runs` holds runs trained on demo data built with other
      settings, which would be scored on a different test split.
  """
  check_settings(settings)
  runs_dir = os.path.join(settings.out_dir, 'runs')
  has_runs = tf.io.gfile.exists(runs_dir) and bool(tf.io.gfile.listdir(runs_dir))
  try:
    data = demo_data.build_demo_data(
        os.path.join(settings.out_dir, 'data'), seed=settings.seed,
        images_per_class=settings.images_per_class, test_per_class=settings.test_per_class,
        log=log, allow_rebuild=not has_runs)
  except demo_data.StaleBuild as error:
    raise ValueError(f'{runs_dir} holds runs trained on other demo data: {error} Use a new '
                     f'--out_dir, or delete {runs_dir} to train again.') from error
  configs = demo_configs(settings, data)
  accuracies, seconds, ranked, resumed = {}, {}, [], []
  for name, config in configs.items():
    if tf.train.latest_checkpoint(config.model_dir):
      resumed.append(name)
    started = time.time()
    result = loop.run_training(config, log=log)
    seconds[name] = time.time() - started
    if result.preempted:
      raise Preempted(f'SIGTERM stopped the {name} run at step {result.steps}; its checkpoint '
                      'is saved. Rerun the same command to go on.')
    ranked = result.ranked_classes or ranked
    if name in METHODS:
      accuracies[name] = evaluation.evaluate(config.model_dir, 'test')['top1']
  export_dir = serving.export_saved_model(
      configs['l2tl'].model_dir, os.path.join(configs['l2tl'].model_dir, 'export'))
  return DemoReport(accuracies, seconds, ranked[:10], export_dir, data.source_num_classes,
                    (ranked[-1].expected_lambda, ranked[0].expected_lambda), tuple(resumed))


def format_report(report: DemoReport, settings: DemoSettings) -> str:
  """A markdown table of test accuracies, then the top-ranked source classes."""
  lines = [f'Target: handwritten MNIST digits, {settings.examples_per_class} per class. '
           f'Source: {report.source_num_classes} classes of printed glyphs.',
           '', '| method | test top-1 (%) | train time (s) |', '|---|---|---|']
  def seconds(stage):
    resumed = ' (resumed: this invocation only)' if stage in report.resumed else ''
    return f'{report.seconds[stage]:.0f}{resumed}'
  for method in METHODS:
    lines.append(f'| {method} | {100 * report.accuracies[method]:.1f} | {seconds(method)} |')
  lines.append(f'(pretraining on the source: {seconds("pretrain")} s)')
  low, high = report.lambda_range
  lines += ['', f'Top source classes by expected lambda (L2TL; all {report.source_num_classes} '
                f'classes lie in [{low:.3f}, {high:.3f}], a uniform policy gives 0.5):']
  for rank, row in enumerate(report.top_classes, start=1):
    lines.append(f'{rank:3d}. {row.name!r:8s} (class {row.class_id}) '
                 f'lambda {row.expected_lambda:.3f} +- {row.std:.3f}')
  lines.append(f'\nExported the L2TL model to {report.export_dir}')
  return '\n'.join(lines)
