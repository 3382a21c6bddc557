"""The controller: cadence of training loops, checkpoints, summaries, progress.

Like orbit's Controller, it owns *when* things happen; `trainer.py` owns what
a step computes. Summaries and checkpoints happen only between loops of
`steps_per_loop` steps, so the device never waits on the host mid-loop.
"""

import dataclasses
import signal
import threading
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from l2tl_tf import config as config_lib
from l2tl_tf import evaluation, input_pipeline, lambda_prior, preflight, ranking, runs
from l2tl_tf.config import Config
from l2tl_tf.strategy import get_strategy, is_chief, summary_writer


# Exit status of a binary whose run SIGTERM stopped: a checkpoint was saved,
# rerun the same command to resume.
PREEMPTED_EXIT_CODE = 42


@dataclasses.dataclass
class TrainResult:
  """What a finished training call reports."""
  model_dir: str
  steps: int
  final_metrics: dict
  seconds: float
  ranked_classes: Optional[list] = None
  # One entry per loop: {'step': ..., metric: mean over the loop, ...} plus
  # 'eval/val_top1' ('eval/val_mean_auc' for a multi-label target) where
  # evaluated (see Config.eval_every).
  history: list = dataclasses.field(default_factory=list)
  # True when SIGTERM stopped the run early (after saving a checkpoint).
  preempted: bool = False


def run_training(config: Config, strategy: Optional[tf.distribute.Strategy] = None,
                 log=None) -> TrainResult:
  """Trains (or resumes) the run described by `config`.

  Every check that can fail on the settings or the data runs before the
  first step; `config.json` is written before anything else in model_dir.
  """
  log = log or print_flushed
  config_lib.validate(config)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  if config.optimizer.warmup_steps >= config.train_steps and config.optimizer.warmup_steps:
    raise ValueError(f'--warmup_steps={config.optimizer.warmup_steps} >= --train_steps='
                     f'{config.train_steps}: the learning rate would never reach its target.')
  strategy = strategy or get_strategy(config.strategy, config.tpu)
  subsets = preflight.check(config, strategy)
  class_names = (input_pipeline.source_class_names(config.data)
                 if config.mode.uses_source else None)
  fixed_lambda = (ranking.read_class_weight_vector(config.fixed_source_weights,
                                                   config.data.source_num_classes)
                  if config.fixed_source_weights else None)
  changes = runs.setting_changes(config)
  if changes:
    log(runs.describe_changes(changes, bool(tf.train.latest_checkpoint(config.model_dir))))
  if is_chief(strategy):
    runs.prepare_run_dir(config)
  # Seeds Keras initialisers (and Python/NumPy/TF global RNGs): the same
  # command initialises the same weights.
  keras.utils.set_random_seed(config.seed)
  run = runs.build(config, strategy, fixed_lambda)
  _initialise(run, class_names, log)
  iterators = _iterators(config, strategy, subsets, int(run.trainer.step.numpy()))
  writer = summary_writer(config.model_dir, strategy)
  validate_on = _validation_evaluator(config, run, subsets)
  started = time.time()
  with PreemptionSignal() as preemption:
    metrics, history = _train_loops(run, iterators, writer, validate_on, preemption, log)
  writer.flush()
  ranked = None
  if config.mode.learns_lambda and not preemption.received:
    ranked = ranking.rank_source_classes(run.policy, class_names, seed=config.seed)
    if is_chief(strategy):
      ranking.write_source_class_weights(ranked, config.model_dir)
  return TrainResult(config.model_dir, int(run.trainer.step.numpy()), metrics,
                     time.time() - started, ranked, history, preemption.received)


def _train_loops(run: runs.Run, iterators: dict, writer, validate_on, preemption, log):
  """Runs loops to train_steps; checkpoints on cadence, at the end and on SIGTERM."""
  config = run.config
  start, started = int(run.trainer.step.numpy()), time.time()
  metrics, history = {}, []
  while (step := int(run.trainer.step.numpy())) < config.train_steps:
    num_steps = _steps_this_loop(config, step)
    loop_start = time.time()
    metrics = _run_loop(run, iterators, step, num_steps, log)
    step += num_steps
    _stop_if_loss_diverged(run, metrics, step - num_steps + 1, step)
    # Saved before validation, so a failed validation pass loses no training.
    saved = (step % config.checkpoint_every == 0 or step >= config.train_steps
             or preemption.received)
    if saved:
      _save(run, step)
    if validate_on and (step % config.eval_every == 0 or step >= config.train_steps):
      metrics[evaluation.validation_metric(run.config)[0]] = validate_on()
    history.append({'step': step, **metrics})
    _write_summaries(writer, run, metrics, step)
    log(_progress_line(config, step, metrics, num_steps / (time.time() - loop_start),
                       (time.time() - started) / max(step - start, 1)))
    if preemption.received:
      if not saved:  # it landed after the save above (in validation, summaries or the log)
        _save(run, step)
      log(f'SIGTERM received: checkpoint saved at step {step}. Rerun the same command to '
          'resume.')
      break
  return metrics, history


def _save(run: runs.Run, step: int) -> None:
  """Checkpoints `step`, unless the weights have diverged (then it raises)."""
  _stop_if_weights_diverged(run, step)
  run.manager.save(checkpoint_number=step)


def _run_loop(run: runs.Run, iterators: dict, step: int, num_steps: int, log) -> dict:
  """Runs one loop; a read or decode error met in it is traced to its shard."""
  try:
    metrics = run.trainer.train_loop(iterators, tf.constant(num_steps, tf.int32))
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
    preflight.explain_input_error(run.config, error, _steps(step + 1, step + num_steps), log)
    raise
  return {name: float(value) for name, value in metrics.items()}


def _stop_if_loss_diverged(run: runs.Run, metrics: dict, first_step: int, last_step: int):
  """Stops on a NaN or Inf loss, before it can reach a checkpoint.

  The loop's mean loss is on the host already, so this adds no sync per step;
  a NaN at any step of the loop makes the mean NaN. It names the loop's steps:
  --steps_per_loop=1 would name the exact step.
  """
  loss = metrics['loss/total']
  if not np.isfinite(loss):
    raise _diverged(run, f'the mean loss/total over {_steps(first_step, last_step)} is {loss}')


def _stop_if_weights_diverged(run: runs.Run, step: int) -> None:
  """Refuses to save weights an update made non-finite after a finite loss."""
  variables = [v for part in run.model.checkpoint_items().values() for v in part.variables]
  if not bool(tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])):
    raise _diverged(run, f'the weights after step {step} are not finite')


def _diverged(run: runs.Run, found: str) -> FloatingPointError:
  config = run.config
  latest = run.manager.latest_checkpoint
  kept = (f'the last good checkpoint, {latest}, is kept' if latest
          else 'there is no earlier checkpoint')
  suspects = 'the inputs of those steps' + (
      f' and --warm_start_from={config.warm_start_from}' if config.warm_start_from else '')
  return FloatingPointError(
      f'Training diverged: {found}. It stopped without saving; {kept}. Lower --learning_rate '
      f'(now {config.optimizer.learning_rate}) or raise --warmup_steps (now '
      f'{config.optimizer.warmup_steps}), or check {suspects}; then train in a new '
      '--model_dir.')


def _steps(first: int, last: int) -> str:
  return f'step {first}' if first == last else f'steps {first}-{last}'


class PreemptionSignal:
  """Notes SIGTERM (a preemption notice) so the loop can checkpoint and stop.

  The loop finishes its current `steps_per_loop` steps, saves, and returns
  with `TrainResult.preempted`; only the main thread can install the handler.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.received = True

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _initialise(run: runs.Run, class_names, log) -> None:
  """Resumes the run's own checkpoint, else warm-starts and starts the policy: from
  --policy_from's learned logits, or from lambda's prior."""
  if runs.restore_latest(run):
    log(f'Resuming {run.config.model_dir} from step {int(run.trainer.step.numpy())}.')
    return
  if run.config.warm_start_from:
    prefix = runs.warm_start(run, run.config.warm_start_from)
    log(f'Warm-started from {prefix}.')
  if run.config.policy_from:
    prefix = runs.load_policy(run.policy, run.config.policy_from)
    log(f'Replaying the policy of {prefix}, frozen: no reward, no policy update.')
  elif run.config.warm_start_from:
    _start_lambda_prior(run, class_names, log)


def _start_lambda_prior(run: runs.Run, class_names, log) -> None:
  """Sets the policy's starting logits from --lambda_prior (fresh runs only)."""
  started = time.time()
  weights = lambda_prior.lambda_prior(run.model.encoder, run.config)
  if weights is None:
    return
  run.policy.set_lambda_prior(weights, run.config.policy.lambda_prior_strength)
  if is_chief(run.strategy):
    path = lambda_prior.write_prior(weights, class_names, run.config.model_dir)
    log(f'Lambda prior ({run.config.policy.lambda_prior}) in {time.time() - started:.0f} s: '
        f'{path}.')


def _validation_evaluator(config: Config, run: runs.Run, subsets):
  """A no-argument function giving the validation metric (top-1, or mean AUC
  for a multi-label target), or None when not asked for."""
  if not (config.eval_every and config.mode.uses_target):
    return None
  dataset = input_pipeline.validation_batches(config, subsets)
  predictor = evaluation.make_predictor(run)
  score = evaluation.validation_metric(config)[1]
  return lambda: score(*evaluation.predict_dataset(predictor, dataset))


def _iterators(config: Config, strategy, subsets, start_step: int) -> dict:
  """Distributed iterators for the streams this mode reads, positioned at start_step."""
  makers = {}
  if config.mode.uses_source:
    makers['source'] = lambda ctx: input_pipeline.source_dataset(config, ctx, start_step)
  if config.mode.uses_target:
    makers['target'] = lambda ctx: input_pipeline.target_train_dataset(
        config, subsets, ctx, start_step)
  if config.learns_policy:
    makers['reward'] = lambda ctx: input_pipeline.reward_dataset(config, subsets, ctx,
                                                                 start_step)
  return {name: iter(strategy.distribute_datasets_from_function(make))
          for name, make in makers.items()}


def _steps_this_loop(config: Config, step: int) -> int:
  """Steps until the loop size, the next checkpoint, the next validation (when
  --eval_every asks for a curve) or the end, whichever comes first."""
  boundaries = [config.steps_per_loop, config.train_steps - step,
                config.checkpoint_every - step % config.checkpoint_every]
  if config.eval_every and config.mode.uses_target:
    boundaries.append(config.eval_every - step % config.eval_every)
  return min(boundaries)


_REWARD_METRICS = ('policy/reward', 'policy/baseline', 'policy/advantage')


def _write_summaries(writer, run: runs.Run, metrics: dict, step: int) -> None:
  with writer.as_default(step=step):
    for name, value in metrics.items():
      if name.startswith('policy/') and run.policy is None:
        continue
      if name in _REWARD_METRICS and not run.config.learns_policy:  # a frozen replay
        continue
      tf.summary.scalar(name, value)
    if run.policy is not None:
      tf.summary.scalar('policy/lambda_entropy', run.policy.lambda_entropy())
      tf.summary.scalar('policy/alpha_entropy', run.policy.alpha_entropy())
      tf.summary.scalar('policy/expected_alpha', run.policy.expected_alpha())
      # REINFORCE's Adam (alpha_s, and lambda under the paper's credit); a replay has none.
      if run.config.learns_policy:
        tf.summary.scalar('policy/learning_rate',
                          tf.cast(run.policy.optimizer.learning_rate, tf.float32))
      if run.policy.per_class_credit:
        tf.summary.scalar('policy/lambda_credit_learning_rate', run.policy.credit_rate)
      tf.summary.histogram('policy/expected_lambda', run.policy.expected_lambda())


def _progress_line(config: Config, step: int, metrics: dict, steps_per_second: float,
                   seconds_per_step: float) -> str:
  remaining = (config.train_steps - step) * seconds_per_step
  parts = [f'[{config.mode.value}] step {step}/{config.train_steps}',
           f'loss {metrics["loss/total"]:.4f}']
  if config.learns_policy:
    parts.append(f'reward {metrics["policy/reward"]:.3f}')
    parts.append(f'alpha {metrics["policy/alpha"]:.3f}')
  parts += [f'lr {metrics["learning_rate"]:.4g}', f'{steps_per_second:.2f} steps/s',
            f'ETA {_duration(remaining)}']
  return '  '.join(parts)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


def print_flushed(message: str) -> None:
  """Default progress sink: flushed so progress shows even when piped to a file."""
  print(message, flush=True)
