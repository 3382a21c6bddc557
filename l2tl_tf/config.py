"""The one typed, frozen configuration of a run.

Binaries turn absl flags into a `Config` (see `flag_defs.py`); library code only
ever reads a `Config`. The resolved config is written to `model_dir/config.json`
before anything else, so a run directory always says how it was made.

Paper symbols are given next to the readable names: B_S, B_T, B_P, M_S, n, n',
beta, gamma (Zhu et al., "Learning to Transfer Learn", Appendix A).
"""

import dataclasses
import enum
import json
import math
from typing import Any, Optional


class Mode(str, enum.Enum):
  """What a training run optimises.

  scratch:  target loss only, random init (alpha_s = 0, alpha_t = 1).
  pretrain: source loss only, lambda = 1 (the N_S pre-training steps of Eq. 3).
  finetune: target loss only, encoder warm-started from a pretrained run.
  l2tl:     the joint loss of Eq. 1 with lambda and alpha_s from the policy,
            which is updated by REINFORCE every step.
  uniform:  ablation of Sec. 5.1.2: lambda = 1 for every class, alpha_s learned.
  random:   ablation of Sec. 5.1.2 (random search): lambda sampled from the
            initial uniform policy and never learned; alpha_s still learned.
  fixed:    joint training with lambda fixed per source class from
            --fixed_source_weights (e.g. the planted-class oracle); alpha_s
            learned as in uniform.
  """
  SCRATCH = 'scratch'
  PRETRAIN = 'pretrain'
  FINETUNE = 'finetune'
  L2TL = 'l2tl'
  UNIFORM = 'uniform'
  RANDOM = 'random'
  FIXED = 'fixed'

  @property
  def uses_source(self) -> bool:
    return self in (Mode.PRETRAIN, Mode.L2TL, Mode.UNIFORM, Mode.RANDOM, Mode.FIXED)

  @property
  def uses_target(self) -> bool:
    return self is not Mode.PRETRAIN

  @property
  def uses_policy(self) -> bool:
    """Whether actions are sampled and a reward is computed every step."""
    return self in (Mode.L2TL, Mode.UNIFORM, Mode.RANDOM, Mode.FIXED)

  @property
  def learns_lambda(self) -> bool:
    return self is Mode.L2TL

  @property
  def samples_lambda(self) -> bool:
    """Whether lambda comes from the policy (and so top-B_S selection runs)."""
    return self in (Mode.L2TL, Mode.RANDOM)

  @property
  def learns_alpha(self) -> bool:
    return self in (Mode.L2TL, Mode.UNIFORM, Mode.RANDOM, Mode.FIXED)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the three streams come from and how images are prepared."""
  # Dataset specs: a TFRecord file pattern or `tfds:NAME/SPLIT`.
  source_train: str = ''
  target_train: str = ''
  # Empty: carve `val_examples_per_class` per class out of target_train.
  target_val: str = ''
  target_test: str = ''
  tfds_data_dir: Optional[str] = None
  # Subtracted from stored labels (1 for 1-based ImageNet TFRecords).
  source_label_offset: int = 0
  target_label_offset: int = 0
  source_num_classes: int = 0
  target_num_classes: int = 0
  # Multi-label target (CheXpert, the paper's Table 7): each record's
  # image/class/label holds the ids of its positive classes (any number, none
  # included); h_T is trained with per-class sigmoid cross-entropy and scored
  # by per-class and mean AUC. The source stays single-label.
  target_multi_label: bool = False
  # Text file, one class name per line. Empty: `class_names.txt` next to the
  # source files if present, else TFDS label names, else the class ids.
  source_class_names: str = ''
  image_size: int = 299
  # Channels the encoder sees; grayscale and RGB files are converted to it.
  num_channels: int = 3
  # k-shot: keep this many target training examples per class (0 = all).
  examples_per_class: int = 0
  # Per-class size of the validation carve-out when target_val is empty.
  val_examples_per_class: int = 0
  # 'auto' picks 'inception' for images >= 96 px and 'pad_crop' below.
  train_crop: str = 'auto'
  random_flip: bool = True
  shuffle_buffer: int = 10_000


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The encoder g and the heads h_S, h_T."""
  backbone: str = 'inception_v3'
  # Local weights file for keras.applications backbones (nothing downloads).
  backbone_weights: str = ''
  # Which training passes move the encoder's moving statistics (BatchNorm):
  # 'all': the source and the target passes (the official code: both update);
  # 'target': in joint modes only the target pass, so inference-mode h_T(g(x))
  # (reward, evaluation, serving) normalises with target statistics.
  bn_statistics: str = 'all'


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """The input-free policy over lambda (per source class) and alpha_s."""
  # n: lambda levels k/(n-1), k = 0..n-1 (the paper's Fig. 5 sweeps 6..101).
  num_lambda_levels: int = 11
  # n': alpha_s levels beta*k'/(n'-1).
  num_alpha_levels: int = 100
  alpha_beta: float = 0.5
  # 'paper': levels k/(n-1) and beta*k'/(n'-1). 'official': the released
  # code's k/n and k'/alpha_divisor.
  level_values: str = 'paper'
  alpha_divisor: float = 100.0
  # gamma: b <- (1 - gamma) * b + gamma * R. The official code used 0.1.
  baseline_decay: float = 0.05
  # 'paper': advantage against the baseline before this step's reward, the
  # baseline starting at the first reward. 'official': zero-debiased EMA that
  # already includes this step's reward.
  baseline_style: str = 'paper'
  learning_rate: float = 1e-4
  # 'sum': log-prob of the joint action (REINFORCE). 'mean': the official
  # code's mean over source classes.
  log_prob_reduction: str = 'sum'
  # 'accuracy' (top-1) or 'auc' (mean one-vs-rest AUC).
  reward_metric: str = 'accuracy'
  # Credit for the lambda actions. 'reward' (paper): the step's scalar
  # advantage times the joint log-prob. 'first_order': per-class advantages,
  # each candidate scored by the first-order change of the target validation
  # loss (h_T cross-entropy on the step's reward batch) that a step on it would
  # make, standardised over the step's candidates (BUILD_NOTES.md, research).
  # alpha_s keeps the paper's scalar reward either way.
  lambda_credit: str = 'reward'
  # first_order: the validation loss whose gradient scores candidates. 'ce':
  # h_T cross-entropy on the reward batch. 'ncm': cross-entropy of a
  # nearest-class-mean head (class means of the step's target batch, cosine
  # logits times credit_ncm_scale), independent of h_T's current geometry.
  credit_signal: str = 'ce'
  credit_ncm_scale: float = 10.0
  # first_order: score with the gradient of the last N trainable encoder
  # variables only (0: all). Cheaper forward-mode and validation passes.
  credit_last_variables: int = 0
  # first_order: a class's advantage is the 'mean' or 'sum' of its candidates'
  # standardised scores this step (0 when it has none).
  credit_aggregation: str = 'mean'
  # first_order: 'reinforce' samples the score-function gradient with the
  # per-class baseline E[lambda]; 'expected' takes its exact expectation
  # over lambda's levels (the all-action policy gradient of the same objective).
  credit_estimator: str = 'reinforce'
  # first_order: optimizer ('adam' | 'sgd') and rate (0: --policy_learning_rate)
  # for the lambda logits; alpha_s keeps Adam at --policy_learning_rate. Both
  # move only classes with candidates in the step ('adam' is lazy: an absent
  # class's logits and moments stay as they were).
  credit_optimizer: str = 'adam'
  credit_learning_rate: float = 0.0
  # Credit for alpha_s. 'reward' (paper): the scalar REINFORCE above.
  # 'first_order' (needs lambda_credit=first_order, whose scores it reuses):
  # a = sum_j w_j u_j over the step's kept examples, w_j the weight each is
  # trained with (lambda, normalised as --source_weight_normalization says):
  # the first-order drop of the validation loss per unit of alpha_s (before
  # 2026-11-27 the sum ran over every candidate), divided by its running RMS;
  # then a natural-gradient step on alpha's softmax, logit_k +=
  # alpha_credit_rate * a * (alpha_k - E[alpha]) / max_k alpha_k.
  alpha_credit: str = 'reward'
  alpha_credit_rate: float = 0.1
  # Where lambda's logits start. 'none' (paper): uniform. 'feature_similarity':
  # logit_k = -strength * (lambda_k - w_c)^2, w_c the cosine of source class
  # c's mean pretrained feature with the nearest target class mean, scaled to
  # [0, 1] (lambda_prior.py); over --lambda_prior_examples source examples.
  lambda_prior: str = 'none'
  lambda_prior_strength: float = 20.0
  lambda_prior_examples: int = 50_000


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """SGD with momentum for encoder and heads; cosine decay after warm-up."""
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 4e-5
  warmup_steps: int = 2_000
  # 'none': loss_S = alpha_s * sum_j lambda_j L_j / B_T, next to
  # loss_T = sum_k L_k / B_T: Eq. 1 divided by B_T.
  # 'mean_one': kept weights rescaled to mean 1 (the official code).
  source_weight_normalization: str = 'none'
  # 'none': the paper's alpha_s * sum_j lambda_j L_j (Eq. 1), whatever the
  # target loss has become. 'target_ratio': that term times
  # min(1, mean L_T / mean L_S) of the step's batches, gradient stopped, so
  # the source's share of the update fades as the target fits (BUILD_NOTES,
  # "Deviations").
  source_loss_scaling: str = 'none'


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that shapes a run."""
  mode: Mode = Mode.L2TL
  model_dir: str = ''
  warm_start_from: str = ''
  # Run directory of a learned policy to replay, frozen: lambda and alpha_s are
  # sampled from its logits every step and never updated, so no reward set is
  # needed (the paper's Sec. 5: retrain on train + validation with the learned
  # control variables). Read once, when the run starts; a resume reads its own.
  policy_from: str = ''
  # CSV of lambda per source class (the columns of source_class_weights.csv):
  # fixes lambda in modes fixed and pretrain (DATL's importance weights).
  fixed_source_weights: str = ''
  seed: int = 0
  train_steps: int = 20_000
  # B_T; B_S = source_batch_ratio * B_T, B_P = reward_batch_ratio * B_T.
  batch_size: int = 256
  source_batch_ratio: float = 1.0
  reward_batch_ratio: float = 4.0
  # M_S: source candidates per kept source example.
  source_batch_multiplier: int = 5
  eval_batch_size: int = 256
  # Top-1 of the target head on the whole validation set every this many
  # steps (0: never), for validation curves; inference mode, no training.
  eval_every: int = 0
  steps_per_loop: int = 100
  checkpoint_every: int = 1_000
  keep_checkpoints: int = 5
  strategy: str = 'default'
  tpu: str = ''
  # tf.config.experimental.enable_op_determinism(): bit-exact reruns and
  # resumes, at some speed cost.
  deterministic: bool = False
  # Where the M_S * B_S source candidates are decoded. 'after_select': the
  # input pipeline yields encoded bytes, labels and augmentation seeds; the
  # step picks the top B_S by lambda (which needs only labels) and decodes
  # just those, so it trains on exactly the images 'pipeline' would, having
  # decoded 1/M_S as many. 'pipeline' decodes every candidate in tf.data (the
  # paper's design); TPUs need it, since string ops cannot run on the TPU.
  source_decode: str = 'after_select'
  # Which candidates the top B_S is taken over with several replicas.
  # 'per_replica': each replica keeps its top B_S/R of its own M_S*B_S/R
  # candidates (sharded reads). 'global': every replica reads the same
  # M_S*B_S candidates, keeps the global top B_S (what one device would keep)
  # and decodes only its B_S/R slice of them (record reads repeat R times,
  # decodes do not). Identical with one replica.
  selection: str = 'per_replica'
  # XLA-compile the model's forward/backward and the reward forward
  # (single-replica strategies: XLA fails under MirroredStrategy on logical
  # CPUs).
  jit_compile: bool = False
  # Keras dtype policy of the encoder and heads: 'float32' or 'mixed_bfloat16'
  # (TPU-style: bfloat16 compute, float32 variables and losses).
  precision: str = 'float32'
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  policy: PolicyConfig = PolicyConfig()
  optimizer: OptimizerConfig = OptimizerConfig()

  @property
  def target_batch_size(self) -> int:
    """B_T, global."""
    return self.batch_size

  @property
  def learns_policy(self) -> bool:
    """Whether the policy is updated from rewards, and so needs a reward set.

    Not when --policy_from replays a learned policy: it is sampled every step,
    frozen.
    """
    return self.mode.uses_policy and not self.policy_from

  @property
  def source_batch_size(self) -> int:
    """B_S, global: the source examples trained on per step."""
    return int(round(self.source_batch_ratio * self.batch_size))

  @property
  def selects_source(self) -> bool:
    """Whether the step keeps the top B_S of M_S * B_S > B_S candidates."""
    selects = self.mode.samples_lambda or bool(self.fixed_source_weights)
    return selects and self.source_batch_multiplier > 1

  @property
  def source_candidate_batch_size(self) -> int:
    """M_S * B_S, global: the source examples drawn per step."""
    multiplier = self.source_batch_multiplier if self.selects_source else 1
    return multiplier * self.source_batch_size

  @property
  def decodes_after_select(self) -> bool:
    """Whether source candidates reach the step encoded (see source_decode).

    Never with --lambda_credit=first_order: it scores every candidate, so
    every candidate is decoded.
    """
    return (self.selects_source and self.source_decode == 'after_select'
            and (self.policy.lambda_credit != 'first_order' or bool(self.policy_from)))

  @property
  def reward_batch_size(self) -> int:
    """B_P, global."""
    return int(round(self.reward_batch_ratio * self.batch_size))

  def to_dict(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self), default=_enum_value))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'Config':
    """Inverse of `to_dict`; unknown keys are an error, not silently dropped."""
    nested = {'data': DataConfig, 'model': ModelConfig, 'policy': PolicyConfig,
              'optimizer': OptimizerConfig}
    kwargs = {}
    for key, value in values.items():
      if key in nested:
        kwargs[key] = nested[key](**value)
      elif key == 'mode':
        kwargs[key] = Mode(value)
      else:
        kwargs[key] = value
    return cls(**kwargs)


def _enum_value(value):
  if isinstance(value, enum.Enum):
    return value.value
  raise TypeError(f'{value!r} is not JSON serialisable')


# Settings that may differ when a run directory is reused: they change how
# long or how visibly a run goes, not what it computes (train_steps also
# stretches the cosine schedule: a resume logs it). Not jit_compile: XLA's RNG
# draws other actions than the standard kernels. model.backbone_weights only
# starts a run: a resumed run restores every weight from its checkpoint.
RESUMABLE_CHANGES = frozenset({
    'train_steps', 'steps_per_loop', 'checkpoint_every', 'keep_checkpoints',
    'eval_batch_size', 'eval_every', 'data.target_test', 'strategy', 'tpu', 'deterministic',
    'source_decode', 'model.backbone_weights'})


def resumable_change(setting: str, old: Any, new: Any) -> bool:
  """Whether a run may resume with `setting` changed from `old` to `new`.

  policy_from is read only when a replay starts, so a replay may resume with it
  pointing elsewhere (a moved copy); but adding or dropping it would turn a
  learning run into a frozen replay or back.
  """
  if setting == 'policy_from':
    return bool(old) and bool(new)
  return setting in RESUMABLE_CHANGES


def validate(config: Config) -> None:
  """Raises ValueError naming the setting and the fix for an unusable config.

  Only checks that need no data: data-dependent checks live in the input
  pipeline, and both run before the first training step.
  """
  data, policy, optimizer = config.data, config.policy, config.optimizer
  _require(config.model_dir, '--model_dir is required.')
  _require(config.train_steps > 0, f'--train_steps={config.train_steps} must be > 0.')
  _require(config.batch_size > 0, f'--batch_size={config.batch_size} must be > 0.')
  _require(config.source_batch_multiplier >= 1,
           f'--source_batch_multiplier={config.source_batch_multiplier} must be >= 1.')
  _require(config.steps_per_loop > 0, f'--steps_per_loop={config.steps_per_loop} must be > 0.')
  _require(config.checkpoint_every > 0,
           f'--checkpoint_every={config.checkpoint_every} must be > 0 (steps between '
           'checkpoints; --train_steps saves only at the end).')
  _require(config.keep_checkpoints >= 1,
           f'--keep_checkpoints={config.keep_checkpoints} must be >= 1: a run resumes from '
           'its latest checkpoint.')
  _require(config.eval_every >= 0,
           f'--eval_every={config.eval_every} must be >= 0 (0: no validation curve).')
  _require(config.eval_batch_size > 0,
           f'--eval_batch_size={config.eval_batch_size} must be > 0.')
  _require(data.val_examples_per_class >= 0,
           f'--val_examples_per_class={data.val_examples_per_class} must be >= 0.')
  _require(data.examples_per_class >= 0,
           f'--examples_per_class={data.examples_per_class} must be >= 0 (0: every example '
           'left after the validation carve-out).')
  _require(not (data.target_val and data.val_examples_per_class),
           f'--target_val and --val_examples_per_class={data.val_examples_per_class} both give '
           'a validation set: pass one (the carve-out would be ignored).')
  _require(not (config.eval_every and config.mode.uses_target)
           or data.target_val or data.val_examples_per_class > 0,
           f'--eval_every={config.eval_every} asks for validation curves but there is no '
           'validation set: pass --target_val, or --val_examples_per_class > 0 to carve one '
           'out of --target_train, or set --eval_every=0.')
  if config.mode.uses_source:
    _require(data.source_train, f'--mode={config.mode.value} needs --source_train.')
    _require(data.source_num_classes > 1,
             f'--mode={config.mode.value} needs --source_num_classes > 1.')
    _require(config.source_batch_size > 0,
             f'--source_batch_ratio={config.source_batch_ratio} gives B_S = 0.')
  if config.mode.uses_target:
    _require(data.target_train, f'--mode={config.mode.value} needs --target_train.')
    _require(data.target_num_classes > 1,
             f'--mode={config.mode.value} needs --target_num_classes > 1.')
  _require(not config.policy_from or config.mode.uses_policy,
           f'--policy_from replays a learned policy: --mode={config.mode.value} has none. '
           'Use the mode the policy was learned in (l2tl, uniform, random or fixed).')
  if config.learns_policy:
    _require(data.target_val or data.val_examples_per_class > 0,
             f'--mode={config.mode.value} needs a reward set: --target_val, or '
             '--val_examples_per_class > 0 to carve one out of --target_train.')
    _require(config.reward_batch_size > 0,
             f'--reward_batch_ratio={config.reward_batch_ratio} gives B_P = 0.')
  _require(config.mode is not Mode.FINETUNE or config.warm_start_from,
           '--mode=finetune needs --warm_start_from (a pretrain run dir or checkpoint).')
  _require(config.mode is not Mode.FIXED or config.fixed_source_weights,
           '--mode=fixed needs --fixed_source_weights (a CSV of lambda per source class).')
  _require(not config.fixed_source_weights or config.mode in (Mode.FIXED, Mode.PRETRAIN),
           f'--fixed_source_weights is used by --mode=fixed or pretrain, not {config.mode.value}.')
  _require(policy.num_lambda_levels >= 2,
           f'--num_lambda_levels={policy.num_lambda_levels} must be >= 2.')
  _require(policy.num_alpha_levels >= 2,
           f'--num_alpha_levels={policy.num_alpha_levels} must be >= 2.')
  _require(policy.level_values in ('paper', 'official'),
           f"--policy_level_values={policy.level_values!r}: use 'paper' or 'official'.")
  _require(policy.baseline_style in ('paper', 'official'),
           f"--baseline_style={policy.baseline_style!r}: use 'paper' or 'official'.")
  _require(policy.alpha_beta > 0.0,
           f'--alpha_beta={policy.alpha_beta} must be > 0: alpha_s takes values in '
           '[0, beta].')
  _require(policy.learning_rate >= 0.0,
           f'--policy_learning_rate={policy.learning_rate} must be >= 0.')
  _require(0.0 < policy.baseline_decay <= 1.0,
           f'--baseline_decay={policy.baseline_decay} must be in (0, 1].')
  _require(policy.log_prob_reduction in ('sum', 'mean'),
           f"--log_prob_reduction={policy.log_prob_reduction!r}: use 'sum' or 'mean'.")
  _require(policy.reward_metric in ('accuracy', 'auc'),
           f"--reward_metric={policy.reward_metric!r}: use 'accuracy' or 'auc'.")
  for flag, value, choices in (('lambda_credit', policy.lambda_credit, ('reward', 'first_order')),
                                ('credit_signal', policy.credit_signal, ('ce', 'ncm')),
                                ('credit_aggregation', policy.credit_aggregation, ('mean', 'sum')),
                                ('credit_estimator', policy.credit_estimator,
                                 ('reinforce', 'expected')),
                                ('credit_optimizer', policy.credit_optimizer, ('adam', 'sgd')),
                                ('alpha_credit', policy.alpha_credit, ('reward', 'first_order'))):
    _require(value in choices, f'--{flag}={value!r}: use one of {", ".join(choices)}.')
  _require(policy.lambda_prior in ('none', 'feature_similarity'),
           f"--lambda_prior={policy.lambda_prior!r}: use 'none' or 'feature_similarity'.")
  if policy.lambda_prior != 'none':
    _require(config.mode.learns_lambda,
             f'--lambda_prior starts the learned lambda policy: --mode=l2tl, not '
             f'{config.mode.value}.')
    _require(config.warm_start_from,
             '--lambda_prior=feature_similarity compares pretrained features: it needs '
             '--warm_start_from (a pretrain run dir or checkpoint).')
    _require(policy.lambda_prior_strength >= 0,
             f'--lambda_prior_strength={policy.lambda_prior_strength} must be >= 0.')
    _require(policy.lambda_prior_examples >= 1,
             f'--lambda_prior_examples={policy.lambda_prior_examples} must be >= 1.')
  if policy.alpha_credit == 'first_order':
    _require(policy.lambda_credit == 'first_order' and config.mode.learns_lambda,
             '--alpha_credit=first_order reuses the candidate scores of '
             '--lambda_credit=first_order: set that too, with --mode=l2tl.')
    _require(policy.alpha_credit_rate > 0.0,
             f'--alpha_credit_rate={policy.alpha_credit_rate} must be > 0.')
  _require(policy.credit_last_variables >= 0,
           f'--credit_last_variables={policy.credit_last_variables} must be >= 0.')
  _require(policy.credit_learning_rate >= 0.0,
           f'--credit_learning_rate={policy.credit_learning_rate} must be >= 0.')
  _require(optimizer.source_weight_normalization in ('none', 'mean_one'),
           f'--source_weight_normalization={optimizer.source_weight_normalization!r}: '
           "use 'none' or 'mean_one'.")
  _require(optimizer.source_loss_scaling in SOURCE_LOSS_SCALINGS,
           f'--source_loss_scaling={optimizer.source_loss_scaling!r}: use one of '
           f'{", ".join(SOURCE_LOSS_SCALINGS)}.')
  _require(0 <= config.seed < 2**32, f'--seed={config.seed} must be in [0, 2**32).')
  _require(data.shuffle_buffer >= 1, f'--shuffle_buffer={data.shuffle_buffer} must be >= 1.')
  _require(math.isfinite(optimizer.learning_rate) and optimizer.learning_rate >= 0.0,
           f'--learning_rate={optimizer.learning_rate} must be >= 0 (a negative rate climbs '
           'the loss).')
  _require(0.0 <= optimizer.momentum <= 1.0,
           f'--momentum={optimizer.momentum} must be in [0, 1].')
  _require(math.isfinite(optimizer.weight_decay) and optimizer.weight_decay >= 0.0,
           f'--weight_decay={optimizer.weight_decay} must be >= 0 (a negative decay '
           'rewards large weights).')
  _require(policy.alpha_divisor > 0.0,
           f'--alpha_divisor={policy.alpha_divisor} must be > 0: the official alpha_s '
           "levels are k' / alpha_divisor.")
  _require(policy.baseline_style != 'official' or policy.baseline_decay < 1.0,
           '--baseline_decay=1 with --baseline_style=official makes the baseline the '
           'reward itself, so every advantage is 0 and the policy never learns: use < 1.')
  for flag, value in (('alpha_beta', policy.alpha_beta),
                      ('policy_learning_rate', policy.learning_rate),
                      ('lambda_prior_strength', policy.lambda_prior_strength),
                      ('credit_learning_rate', policy.credit_learning_rate),
                      ('alpha_credit_rate', policy.alpha_credit_rate),
                      ('alpha_divisor', policy.alpha_divisor)):
    _require(math.isfinite(value), f'--{flag}={value} must be a finite number.')
  _require(0 <= optimizer.warmup_steps,
           f'--warmup_steps={optimizer.warmup_steps} must be >= 0.')
  _require(data.train_crop in ('auto', 'inception', 'pad_crop', 'none'),
           f"--train_crop={data.train_crop!r}: use auto, inception, pad_crop or none.")
  _require(data.num_channels in (1, 3),
           f'--num_channels={data.num_channels} must be 1 or 3.')
  _require(data.image_size >= 8, f'--image_size={data.image_size} must be >= 8.')
  _require(config.source_decode in SOURCE_DECODES,
           f'--source_decode={config.source_decode!r}: use one of {SOURCE_DECODES}.')
  _require(config.selection in SELECTIONS,
           f'--selection={config.selection!r}: use one of {SELECTIONS}.')
  _require(config.model.bn_statistics in BN_STATISTICS,
           f'--bn_statistics={config.model.bn_statistics!r}: use one of {BN_STATISTICS}.')
  _require(config.precision in PRECISIONS,
           f'--precision={config.precision!r}: use one of {PRECISIONS}.')
  _require(config.selection != 'global' or config.source_decode == 'after_select',
           '--selection=global needs --source_decode=after_select: with decoding in the '
           'pipeline every replica would decode all M_S * B_S global candidates.')
  on_tpu = config.strategy == 'tpu' or bool(config.tpu)
  _require(not on_tpu or config.source_decode == 'pipeline' or not config.selects_source,
           '--source_decode=after_select decodes inside the step, which a TPU cannot run '
           '(string ops): use --source_decode=pipeline on TPU.')
  _require(not (config.jit_compile and config.deterministic),
           '--jit_compile with --deterministic cannot run: XLA has no deterministic kernels '
           'for some gradients (MaxPool among them). Drop one of the two.')
  _require(not config.jit_compile or config.strategy in ('default', 'one_device', 'tpu'),
           f'--jit_compile needs a single-replica strategy or TPU, not --strategy='
           f'{config.strategy} (XLA fails under MirroredStrategy on CPU devices).')
  if data.target_multi_label and config.mode.uses_target:
    _validate_multi_label(config)


def _validate_multi_label(config: Config) -> None:
  """What a multi-label target cannot take, refused with the alternative."""
  data, policy = config.data, config.policy
  _require(not config.mode.uses_policy or policy.reward_metric == 'auc',
           '--target_multi_label needs --reward_metric=auc: top-1 accuracy is not defined '
           'when an image has several (or no) positive classes.')
  _require(not data.examples_per_class,
           f'--examples_per_class={data.examples_per_class} cannot subset a multi-label '
           'target (an image counts towards several classes, or none): build the subset '
           'you want and pass --examples_per_class=0.')
  _require(not data.val_examples_per_class,
           f'--val_examples_per_class={data.val_examples_per_class} cannot carve a '
           'multi-label target per class: pass the reward set as --target_val (for '
           'CheXpert, split by patient so that no patient is in both).')
  _require(not (config.mode.learns_lambda and policy.lambda_credit == 'first_order'
                and policy.credit_signal == 'ncm'),
           '--credit_signal=ncm scores with a nearest-class-mean head, which needs one class '
           'per image: use --credit_signal=ce with --target_multi_label.')


SOURCE_DECODES = ('after_select', 'pipeline')
SELECTIONS = ('per_replica', 'global')
PRECISIONS = ('float32', 'mixed_bfloat16')
BN_STATISTICS = ('all', 'target')
SOURCE_LOSS_SCALINGS = ('none', 'target_ratio')


def _require(condition: Any, message: str) -> None:
  if not condition:
    raise ValueError(message)
