"""The speed benchmark of issue 4: where an L2TL step's time goes, side by side.

  python benchmarks/speed.py                      # both setups, about 10 min on 2 cores
  python benchmarks/speed.py --setups=small_cnn --rounds=3 --results_dir=/tmp/speed

For each setup (the small CNN on 28 px grayscale, and ResNet-50 from
keras.applications at a reduced 32 px, RGB) at the paper's batch ratios
(B_S = B_T, B_P = 4 B_T, M_S = 5), in one process and interleaved in rounds so
that background load hits every measurement alike, it times:

  finetune             one fine-tuning step (B_T, decoded in tf.data)
  l2tl                 one L2TL step, source candidates decoded after selection
  l2tl_decode_all      one L2TL step decoding all M_S * B_S candidates in tf.data
                       (the paper's design)
  l2tl_inputs_in_memory  one L2TL step (sampling, selection, decoding the kept
                       candidates, training, reward, policy update) with every
                       stream repeating one batch from memory: the step's own
                       overhead over its parts, without the input pipeline
                       competing for the same two cores
  part_train           forward, backward and SGD on B_S + B_T in-memory images
  part_reward          the target head's inference on B_P in-memory images
                       (each part timed one pass at a time, as the step runs it)
  part_reward_overlapped  the same inference in a loop that overlaps
                       independent passes (reported, not used in the ratio)
  pipeline             pulling one step's source, target and reward batches, no
                       training

and counts source images decoded per trained source image and validation
images decoded per run. Times are medians over rounds; L2TL / parts is the
median over rounds of each round's own ratio (the step against its parts on
the same model, timed just before and just after it); the data are the demo's (glyphs
rendered from matplotlib's fonts -> MNIST-5k, `l2tl_tf.demo_data`), built
once under --data_dir. Writes <results_dir>/speed.json and speed.md.
"""

import dataclasses
import json
import os
import platform
import tempfile
import time
from typing import Callable, Optional

from absl import app, flags
import numpy as np
import tensorflow as tf

from l2tl_tf import demo_data, files, input_pipeline, loop, runs
from l2tl_tf.config import Config, DataConfig, Mode, ModelConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line; defined only when run, so tests can import this module."""
  flags.DEFINE_list('setups', ['small_cnn', 'resnet50'], 'Which setups to time.')
  flags.DEFINE_integer('rounds', 9, 'Interleaved rounds; medians are over rounds.')
  flags.DEFINE_string('data_dir', os.path.join(tempfile.gettempdir(), 'l2tl_speed_data'),
                      'Where the demo TFRecords are built (reused when present).')
  flags.DEFINE_string('results_dir', os.path.join(REPO_ROOT, 'benchmarks', 'results'),
                      'Where speed.json and speed.md go.')

M_S = 5


@dataclasses.dataclass(frozen=True)
class Setup:
  """A backbone at an input size, its batch B (= B_T = B_S) and steps per timing."""
  backbone: str
  image_size: int
  num_channels: int
  batch_size: int
  steps: int


SETUPS = {
    'small_cnn': Setup('small_cnn', 28, 1, batch_size=64, steps=20),
    'resnet50': Setup('resnet50', 32, 3, batch_size=16, steps=10),
}


def make_config(setup: Setup, data: demo_data.DemoData, mode: Mode, model_dir: str,
                source_decode: str = 'after_select') -> Config:
  """The paper's batch ratios (B_S = B_T, B_P = 4 B_T, M_S = 5) on the demo data."""
  data_config = DataConfig(
      source_train=data.source_train, target_train=data.target_train,
      source_num_classes=data.source_num_classes, target_num_classes=data.target_num_classes,
      image_size=setup.image_size, num_channels=setup.num_channels, examples_per_class=0,
      val_examples_per_class=20, random_flip=False, shuffle_buffer=2_000)
  return Config(mode=mode, model_dir=model_dir, train_steps=10**6, batch_size=setup.batch_size,
                source_batch_multiplier=M_S, reward_batch_ratio=4.0, steps_per_loop=setup.steps,
                source_decode=source_decode, data=data_config,
                model=ModelConfig(backbone=setup.backbone))


class DecodeCounter:
  """Counts images through `input_pipeline.decode_image` while active.

  The count is a tf.Variable incremented inside the traced graphs (tf.data
  maps and the step's map_fn alike), so it counts executions, not traces.
  """

  def __init__(self):
    self.count = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._original = input_pipeline.decode_image

  def __enter__(self):
    original, count = self._original, self.count

    def counted(encoded, num_channels):
      with tf.control_dependencies([count.assign_add(1)]):
        return original(encoded, num_channels)
    input_pipeline.decode_image = counted
    return self

  def __exit__(self, *exc_info):
    input_pipeline.decode_image = self._original


def _step_timer(config: Config, inputs_in_memory: bool = False,
                run: Optional[runs.Run] = None) -> Callable[[], float]:
  """Seconds per training step of `config`'s mode, fed by its real pipelines.

  With `inputs_in_memory`, each stream repeats its first batch from memory:
  the step still samples, selects, decodes the kept candidates, trains,
  rewards and updates the policy, but no input pipeline competes for the CPU.
  `run` reuses a built model (so the step and its parts share variables).
  """
  strategy = tf.distribute.get_strategy()
  run = run or runs.build(config, strategy)
  subsets = input_pipeline.target_subsets(config)
  iterators = loop._iterators(config, strategy, subsets, 0)  # pylint: disable=protected-access
  if inputs_in_memory:
    first = {name: next(iterator) for name, iterator in iterators.items()}
    iterators = {name: iter(tf.data.Dataset.from_tensors(batch).repeat())
                 for name, batch in first.items()}
  steps = tf.constant(config.steps_per_loop, tf.int32)
  run.trainer.train_loop(iterators, steps)  # traces, fills prefetch buffers

  def time_it() -> float:
    started = time.perf_counter()
    metrics = run.trainer.train_loop(iterators, steps)
    float(metrics['loss/total'])
    return (time.perf_counter() - started) / config.steps_per_loop
  return time_it


def _part_timers(config: Config, run: runs.Run) -> dict:
  """Seconds per call of the step's two compute parts on in-memory tensors.

  Timed on the L2TL step's own model (`run`), so a ratio of the step to its
  parts compares the same variables and buffers, not two model instances.
  Each part runs one pass at a time (`pass_loop`), as in the step;
  `part_reward_overlapped` times the reward pass the way a plain loop would
  run it, letting independent passes overlap, for the record.
  """
  b, size, channels = config.batch_size, config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(0)

  def images(n):
    return tf.constant(rng.random((n, size, size, channels), np.float32))
  source = (images(config.source_batch_size),
            tf.constant(rng.integers(0, config.data.source_num_classes, b), tf.int32),
            tf.ones([config.source_batch_size]))
  target = (images(b), tf.constant(rng.integers(0, config.data.target_num_classes, b), tf.int32))
  reward_images = images(config.reward_batch_size)
  n = config.steps_per_loop

  def train_pass():
    return run.trainer._model_step(source, target)['loss/target']  # pylint: disable=protected-access

  def reward_pass():
    return tf.reduce_sum(run.model.target_logits(reward_images, training=False))

  def timer(fn):
    fn()  # traces

    def time_it() -> float:
      started = time.perf_counter()
      float(fn())
      return (time.perf_counter() - started) / n
    return time_it
  return {'part_train': timer(pass_loop(train_pass, n)),
          'part_reward': timer(pass_loop(reward_pass, n)),
          'part_reward_overlapped': timer(pass_loop(reward_pass, n, parallel=10))}


def pass_loop(fn: Callable[[], tf.Tensor], n: int, parallel: int = 1):
  """A tf.function running `fn` n times, at most `parallel` passes at once.

  The step runs one reward pass at a time: each scores the update just made.
  A tf.while_loop runs up to 10 iterations at once by default, and reward
  passes on fixed inputs do not depend on each other, so a default loop
  overlaps them: measured here 4-6% less time per pass than one at a time
  (BUILD_NOTES.md, "Speed benchmark"). Training passes are chained through
  the variables they update either way.
  """
  @tf.function
  def loop_fn():
    total = tf.constant(0.0)
    for _ in tf.range(n):
      tf.autograph.experimental.set_loop_options(parallel_iterations=parallel)
      total += fn()
    return total
  return loop_fn


# The pipeline is timed over this many loops' worth of steps, after as many
# pulled untimed: between timings (seconds, while the other timers run) its
# prefetch buffers refill, and AUTOTUNE deepens them to about 34 steps of the
# small CNN's; a short pull then times only the buffer being drained.
PIPELINE_SUSTAINED_LOOPS = 10


def _pipeline_timer(config: Config) -> Callable[[], float]:
  """Seconds to produce one step's source, target and reward batches, no training.

  Sustained production: each timing first drains what the buffers filled
  since the last one, then times a pull far longer than their depth.
  """
  strategy = tf.distribute.get_strategy()
  subsets = input_pipeline.target_subsets(config)
  iterators = loop._iterators(config, strategy, subsets, 0)  # pylint: disable=protected-access
  n = config.steps_per_loop * PIPELINE_SUSTAINED_LOOPS

  @tf.function
  def pull():
    total = tf.constant(0, tf.int64)
    for _ in tf.range(n):
      for iterator in iterators.values():
        element = next(iterator)
        total += tf.cast(tf.size(element[1]), tf.int64)
    return total

  pull()

  def time_it() -> float:
    int(pull())  # untimed: empties the buffers
    started = time.perf_counter()
    int(pull())
    return (time.perf_counter() - started) / n
  return time_it


def count_decodes(config: Config, steps: int) -> dict:
  """Source images decoded per trained source image; validation decodes per run.

  Counted between the first and the last of `steps` + 1 selection steps, so
  what tf.data decodes ahead into its buffers (a constant depth once they are
  full) cancels out.
  """
  subsets = input_pipeline.target_subsets(config)
  with DecodeCounter() as counter:
    run = runs.build(config, tf.distribute.get_strategy())
    source = iter(input_pipeline.source_dataset(config))
    lambdas = tf.ones([config.data.source_num_classes])
    counts = []
    for _ in range(steps + 1):
      run.trainer._kept_source(next(source), lambdas)  # pylint: disable=protected-access
      time.sleep(0.2)  # lets the buffers refill to their steady depth
      counts.append(int(counter.count.numpy()))
    counter.count.assign(0)
    reward = iter(input_pipeline.reward_dataset(config, subsets))
    val_size = len(subsets.val_indices)
    for _ in range(3 * val_size // config.reward_batch_size + 1):  # three passes
      next(reward)
    val_decodes = int(counter.count.numpy())
  return {'source_decoded_per_trained': (counts[-1] - counts[0]) / (
              steps * config.source_batch_size),
          'validation_images': val_size, 'validation_decodes_over_three_passes': val_decodes}


def measure(setup_name: str, data: demo_data.DemoData, rounds: int, log) -> dict:
  """All timings of one setup, interleaved over `rounds`; medians in ms."""
  setup = SETUPS[setup_name]
  with tempfile.TemporaryDirectory() as work:
    def config(mode, decode='after_select'):
      return make_config(setup, data, mode, os.path.join(work, f'{mode.value}_{decode}'), decode)
    l2tl = config(Mode.L2TL)
    log(f'[{setup_name}] building and tracing ...')
    l2tl_run = runs.build(l2tl, tf.distribute.get_strategy())
    timers = {'finetune': _step_timer(config(Mode.FINETUNE)),
              'l2tl_decode_all': _step_timer(config(Mode.L2TL, 'pipeline')),
              'l2tl': _step_timer(l2tl, run=l2tl_run),
              **_part_timers(l2tl, l2tl_run),
              'l2tl_inputs_in_memory': _step_timer(l2tl, inputs_in_memory=True, run=l2tl_run),
              'pipeline': _pipeline_timer(l2tl)}
    samples = {name: [] for name in timers}
    for index in range(rounds):
      for name in ROUND_ORDER:
        for timer in PARTS if name == 'parts' else (name,):
          samples[timer].append(1000.0 * timers[timer]())
      log(f'[{setup_name}] round {index + 1}/{rounds}: ' + '  '.join(
          f'{name} {values[-1]:.1f} ms' for name, values in samples.items()))
    decodes = count_decodes(l2tl, steps=10)
    decodes_all = count_decodes(config(Mode.L2TL, 'pipeline'), steps=10)
  medians = {name: float(np.median(values)) for name, values in samples.items()}
  parts = medians['part_train'] + medians['part_reward']
  return {
      'setup': dataclasses.asdict(setup), 'ms': medians, 'samples_ms': samples,
      'l2tl_over_parts': paired_ratio(samples, 'l2tl'),
      'l2tl_inputs_in_memory_over_parts': paired_ratio(samples, 'l2tl_inputs_in_memory'),
      'l2tl_over_parts_of_medians': medians['l2tl'] / parts,
      'l2tl_over_parts_reward_overlapped': medians['l2tl'] / (
          medians['part_train'] + medians['part_reward_overlapped']),
      'l2tl_over_parts_per_round': per_round_ratios(samples, 'l2tl'),
      'l2tl_over_finetune': medians['l2tl'] / medians['finetune'],
      'l2tl_decode_all_over_finetune': medians['l2tl_decode_all'] / medians['finetune'],
      'pipeline_over_l2tl_consumption': medians['l2tl'] / medians['pipeline'],
      'decodes': decodes, 'decodes_decode_all': decodes_all,
  }


PARTS = ('part_train', 'part_reward')
# One round: each L2TL step timing sits between two timings of its parts, so
# a load change during the round (on this VM, a single timing moves by up to
# 10%) shifts both sides of the ratio; the parts are timed three times a round.
ROUND_ORDER = ('finetune', 'l2tl_decode_all', 'parts', 'l2tl', 'parts',
               'l2tl_inputs_in_memory', 'parts', 'pipeline', 'part_reward_overlapped')
_PARTS_PER_ROUND = ROUND_ORDER.count('parts')


def per_round_ratios(samples: dict, step: str) -> list:
  """step / (part_train + part_reward), the parts averaged over the two timings around it.

  `samples` holds one `step` timing and `_PARTS_PER_ROUND` timings of each
  part per round, in `ROUND_ORDER`.
  """
  before = ROUND_ORDER[:ROUND_ORDER.index(step)].count('parts') - 1
  parts = np.add(samples['part_train'], samples['part_reward']).reshape(-1, _PARTS_PER_ROUND)
  around = parts[:, before:before + 2].mean(axis=1)
  return [float(value / total) for value, total in zip(samples[step], around)]


def paired_ratio(samples: dict, step: str) -> float:
  """Median over rounds of the step-to-parts ratio within each round (`per_round_ratios`).

  Pairing within a round is steadier than a ratio of medians, which mixes
  rounds run under different load (both are in the JSON).
  """
  return float(np.median(per_round_ratios(samples, step)))


BARS = (('l2tl_over_parts', '<=', 1.05), ('l2tl_over_finetune', '<=', 3.4),
        ('source decoded / trained', '<=', 1.2),
        ('pipeline / L2TL consumption (small_cnn)', '>=', 1.5))


def format_table(results: dict) -> str:
  """Markdown: one row per setup, times in ms and the issue's ratios."""
  lines = ['| setup | finetune | L2TL | L2TL, decode all (paper) | L2TL, inputs in memory '
           '| train B_S+B_T | infer B_P | L2TL / parts (inputs in memory) | L2TL / finetune '
           '| source decoded / trained (decode all) | val decodes / 3 passes '
           '| pipeline / L2TL need |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    ms, d = r['ms'], r['decodes']
    lines.append(
        f"| {name} (B={r['setup']['batch_size']}, {r['setup']['image_size']} px) "
        f"| {ms['finetune']:.1f} | {ms['l2tl']:.1f} | {ms['l2tl_decode_all']:.1f} "
        f"| {ms['l2tl_inputs_in_memory']:.1f} | {ms['part_train']:.1f} | {ms['part_reward']:.1f} "
        f"| {r['l2tl_over_parts']:.3f} ({r['l2tl_inputs_in_memory_over_parts']:.3f}) "
        f"| {r['l2tl_over_finetune']:.2f} | {d['source_decoded_per_trained']:.2f} "
        f"({r['decodes_decode_all']['source_decoded_per_trained']:.2f}) "
        f"| {d['validation_decodes_over_three_passes']} of {d['validation_images']} "
        f"| {r['pipeline_over_l2tl_consumption']:.1f}x |")
  return '\n'.join(lines)


def overlapped_lines(results: dict) -> str:
  """L2TL / parts with the reward passes overlapping, as the benchmark first timed them."""
  return '\n'.join(
      f"- {name}: L2TL / parts with the reward part timed overlapped "
      f"{r['ms']['part_reward_overlapped']:.1f} ms instead of {r['ms']['part_reward']:.1f}: "
      f"{r['l2tl_over_parts_reward_overlapped']:.3f} (ratio of medians; one pass at a time: "
      f"{r['l2tl_over_parts_of_medians']:.3f})" for name, r in results.items())


def machine() -> dict:
  return {'python': platform.python_version(), 'tensorflow': tf.__version__,
          'cpus': os.cpu_count(), 'processor': platform.processor() or platform.machine(),
          'load_average_at_end': os.getloadavg()}


def main(argv):
  del argv
  unknown = set(FLAGS.setups) - set(SETUPS)
  if unknown:
    raise app.UsageError(f'--setups: unknown {sorted(unknown)}; choose from {sorted(SETUPS)}.')
  if FLAGS.rounds < 1:  # 0 rounds: every median NaN, written as non-standard JSON
    raise app.UsageError(f'--rounds={FLAGS.rounds} must be >= 1.')
  data = demo_data.build_demo_data(FLAGS.data_dir, log=loop.print_flushed)
  started = time.time()
  results = {name: measure(name, data, FLAGS.rounds, loop.print_flushed) for name in FLAGS.setups}
  table = format_table(results)
  report = {'results': results, 'machine': machine(), 'seconds': time.time() - started,
            'command': 'python benchmarks/speed.py ' + ' '.join(
                f'--{k}={v}' for k, v in (('setups', ','.join(FLAGS.setups)),
                                          ('rounds', FLAGS.rounds))),
            'table': table}
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  files.write_text_atomically(os.path.join(FLAGS.results_dir, 'speed.json'),
                              json.dumps(report, indent=1))
  files.write_text_atomically(
      os.path.join(FLAGS.results_dir, 'speed.md'),
      f"# Speed benchmark\n\n`{report['command']}`, {report['seconds']:.0f} s, "
      f"{report['machine']}\n\nStep times in ms (medians over rounds).\n\n{table}\n\n"
      f"{overlapped_lines(results)}\n")
  print(table)


if __name__ == '__main__':
  define_flags()
  app.run(main)
