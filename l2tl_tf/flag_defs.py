"""absl flags for the binaries, and their translation into one `Config`.

Defaults come from the dataclasses in `config.py` (one source of truth); this
file only names the flags and says what each does. Flags are read in
`config_from_flags`, called from a binary's `main`, and nowhere else.
"""

import dataclasses

from absl import app, flags

from l2tl_tf import config as config_lib
from l2tl_tf.config import Config, DataConfig, ModelConfig, OptimizerConfig, PolicyConfig
from l2tl_tf.strategy import STRATEGIES

FLAGS = flags.FLAGS

# flag name -> (config section or '' for top level, field name, help).
_FIELDS = {
    'mode': ('', 'mode', 'scratch | pretrain | finetune | l2tl | uniform | random | fixed.'),
    'fixed_source_weights': ('', 'fixed_source_weights',
                             'CSV of lambda per source class (source_class_weights.csv '
                             'columns) for --mode=fixed, or weighted (DATL) pretraining.'),
    'model_dir': ('', 'model_dir', 'Run directory: config.json, checkpoints, events, outputs.'),
    'warm_start_from': ('', 'warm_start_from',
                        'Pretrain run directory or checkpoint prefix to initialise g (and h_S).'),
    'policy_from': ('', 'policy_from',
                    'Run directory of a learned policy to replay frozen (the paper\'s Sec. 5: '
                    'retrain on train + validation); no reward set is needed.'),
    'seed': ('', 'seed', 'Seed for subsets, shuffles, augmentation and policy actions.'),
    'train_steps': ('', 'train_steps', 'Training iterations N.'),
    'batch_size': ('', 'batch_size', 'B_T, the global target batch size.'),
    'source_batch_ratio': ('', 'source_batch_ratio', 'B_S / B_T.'),
    'reward_batch_ratio': ('', 'reward_batch_ratio', 'B_P / B_T (paper: 4).'),
    'source_batch_multiplier': ('', 'source_batch_multiplier',
                                'M_S: source candidates drawn per kept example (paper: 5).'),
    'eval_batch_size': ('', 'eval_batch_size', 'Batch size for evaluation passes.'),
    'eval_every': ('', 'eval_every',
                   'Validation top-1 every this many steps (0: never), for curves.'),
    'steps_per_loop': ('', 'steps_per_loop', 'Steps per tf.function call (summaries between).'),
    'checkpoint_every': ('', 'checkpoint_every', 'Save a checkpoint every this many steps.'),
    'keep_checkpoints': ('', 'keep_checkpoints', 'Checkpoints kept in model_dir.'),
    'strategy': ('', 'strategy', f'Distribution strategy: one of {", ".join(STRATEGIES)}.'),
    'tpu': ('', 'tpu', 'TPU name or address (local on a TPU VM); implies the TPU strategy.'),
    'deterministic': ('', 'deterministic',
                      'Enable TF op determinism: bit-exact reruns and resumes (slower).'),
    'source_decode': ('', 'source_decode',
                      'after_select: decode only the B_S kept source candidates, in the step '
                      '(CPU/GPU); pipeline: decode all M_S * B_S in tf.data (paper; TPU).'),
    'selection': ('', 'selection',
                  'per_replica: top B_S/R of each replica\'s candidates; global: top B_S of '
                  'all M_S * B_S, as on one device (reads repeat per replica).'),
    'jit_compile': ('', 'jit_compile', 'XLA-compile the model compute (single replica or TPU).'),
    'precision': ('', 'precision', 'float32 | mixed_bfloat16 (bfloat16 compute, float32 '
                  'variables and losses).'),
    'source_train': ('data', 'source_train', 'Source dataset: TFRecord pattern or tfds:NAME/SPLIT.'),
    'target_train': ('data', 'target_train', 'Target training dataset spec.'),
    'target_val': ('data', 'target_val',
                   'Target validation (reward) dataset spec; empty carves it from target_train.'),
    'target_test': ('data', 'target_test', 'Target test dataset spec (used by evaluate).'),
    'tfds_data_dir': ('data', 'tfds_data_dir', 'data_dir for tfds: specs.'),
    'source_label_offset': ('data', 'source_label_offset',
                            'Subtracted from source labels (1 for 1-based ImageNet TFRecords).'),
    'target_label_offset': ('data', 'target_label_offset', 'Subtracted from target labels.'),
    'source_num_classes': ('data', 'source_num_classes', 'C_S, number of source classes.'),
    'target_num_classes': ('data', 'target_num_classes', 'C_T, number of target classes.'),
    'target_multi_label': ('data', 'target_multi_label',
                           'Multi-label target: each record lists its positive class ids; '
                           'sigmoid cross-entropy, AUC reward and metrics (CheXpert).'),
    'source_class_names': ('data', 'source_class_names',
                           'Text file with one source class name per line.'),
    'image_size': ('data', 'image_size', 'Side of the square network input.'),
    'num_channels': ('data', 'num_channels', '1 (grayscale) or 3 (RGB) channels for the encoder.'),
    'examples_per_class': ('data', 'examples_per_class',
                           'k-shot: target training examples kept per class (0 = all).'),
    'val_examples_per_class': ('data', 'val_examples_per_class',
                               'Per-class validation carve-out when --target_val is empty.'),
    'train_crop': ('data', 'train_crop', 'auto | inception | pad_crop | none.'),
    'random_flip': ('data', 'random_flip', 'Random left-right flips in training.'),
    'shuffle_buffer': ('data', 'shuffle_buffer', 'Shuffle buffer of the source stream.'),
    'backbone': ('model', 'backbone', 'Encoder g: small_cnn | inception_v3 | resnet50 | densenet121.'),
    'backbone_weights': ('model', 'backbone_weights',
                         'Local keras.applications weights file (include_top=False).'),
    'bn_statistics': ('model', 'bn_statistics',
                      'all (official code: source and target passes move BatchNorm\'s moving '
                      'statistics) | target (joint modes: only target passes do).'),
    'num_lambda_levels': ('policy', 'num_lambda_levels', 'n: lambda levels k/(n-1).'),
    'num_alpha_levels': ('policy', 'num_alpha_levels', "n': alpha_s levels (paper: 100)."),
    'alpha_beta': ('policy', 'alpha_beta', 'beta: alpha_s = beta*k/(n\'-1) (paper: 0.5).'),
    'policy_level_values': ('policy', 'level_values',
                            'paper: k/(n-1), beta*k/(n\'-1); official: k/n, k/alpha_divisor.'),
    'alpha_divisor': ('policy', 'alpha_divisor', 'Divisor for official alpha levels.'),
    'baseline_decay': ('policy', 'baseline_decay',
                       'gamma in b <- (1-gamma) b + gamma R (paper 0.05; official 0.1).'),
    'baseline_style': ('policy', 'baseline_style',
                       'paper (advantage vs earlier rewards) | official (debiased EMA incl. R).'),
    'policy_learning_rate': ('policy', 'learning_rate', 'Adam rate for Phi (paper 1e-4; official 0.01).'),
    'log_prob_reduction': ('policy', 'log_prob_reduction',
                           'sum (joint log-prob) | mean (official: mean over source classes).'),
    'reward_metric': ('policy', 'reward_metric', 'accuracy | auc.'),
    'lambda_credit': ('policy', 'lambda_credit',
                      'reward (paper: scalar advantage, joint log-prob) | first_order '
                      '(per-class advantages from each candidate\'s first-order effect on '
                      'the validation loss, standardised within the step).'),
    'credit_signal': ('policy', 'credit_signal',
                      'first_order: ce (h_T cross-entropy on the reward batch) | ncm '
                      '(nearest-class-mean head on the step\'s target batch).'),
    'credit_ncm_scale': ('policy', 'credit_ncm_scale', 'first_order, ncm: cosine logit scale.'),
    'credit_last_variables': ('policy', 'credit_last_variables',
                              'first_order: score with the last N trainable encoder '
                              'variables only (0: all).'),
    'credit_aggregation': ('policy', 'credit_aggregation',
                           'first_order: mean | sum of a class\'s standardised scores.'),
    'credit_estimator': ('policy', 'credit_estimator',
                         'first_order: reinforce (sampled, baseline E[lambda]) | expected '
                         '(exact expectation over lambda levels).'),
    'credit_optimizer': ('policy', 'credit_optimizer', 'first_order: adam | sgd for lambda.'),
    'credit_learning_rate': ('policy', 'credit_learning_rate',
                             'first_order: rate for lambda (0: --policy_learning_rate).'),
    'alpha_credit': ('policy', 'alpha_credit',
                     'reward (paper: alpha_s by the scalar REINFORCE) | first_order (alpha_s '
                     'by the first-order value of the lambda-weighted candidates; needs '
                     '--lambda_credit=first_order).'),
    'alpha_credit_rate': ('policy', 'alpha_credit_rate',
                          'alpha_credit=first_order: natural-gradient step on alpha\'s logits.'),
    'lambda_prior': ('policy', 'lambda_prior',
                     'none (paper: lambda logits start uniform) | feature_similarity (start '
                     'near each source class\'s pretrained-feature similarity to the target).'),
    'lambda_prior_strength': ('policy', 'lambda_prior_strength',
                              'feature_similarity: logit_k = -strength * (lambda_k - w)^2.'),
    'lambda_prior_examples': ('policy', 'lambda_prior_examples',
                              'feature_similarity: source examples whose features are averaged.'),
    'learning_rate': ('optimizer', 'learning_rate', 'Peak SGD learning rate.'),
    'momentum': ('optimizer', 'momentum', 'SGD momentum (paper: 0.9).'),
    'nesterov': ('optimizer', 'nesterov', 'Nesterov momentum (the official code used it).'),
    'weight_decay': ('optimizer', 'weight_decay', 'L2 factor on kernels (paper: 0 or 4e-5).'),
    'warmup_steps': ('optimizer', 'warmup_steps', 'Linear warm-up steps before cosine decay.'),
    'source_weight_normalization': ('optimizer', 'source_weight_normalization',
                                    'none (Eq. 1) | mean_one (official: kept weights mean 1).'),
    'source_loss_scaling': ('optimizer', 'source_loss_scaling',
                            'none (paper: Eq. 1 as is) | target_ratio (the source term times '
                            'min(1, mean L_T / mean L_S) of the step, fading as the target '
                            'fits).'),
}

_SECTIONS = {'': Config, 'data': DataConfig, 'model': ModelConfig, 'policy': PolicyConfig,
             'optimizer': OptimizerConfig}


def _default(section: str, field: str):
  value = {f.name: f.default for f in dataclasses.fields(_SECTIONS[section])}[field]
  return value.value if field == 'mode' else value


def define_flags(names=None, flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the training flags (all, or `names`), typed by their defaults."""
  for name, (section, field, help_text) in _FIELDS.items():
    if names is not None and name not in names or name in flag_values:
      continue
    default = _default(section, field)
    if name == 'mode':
      flags.DEFINE_enum(name, default, [m.value for m in config_lib.Mode], help_text,
                        flag_values=flag_values)
    else:
      define = (flags.DEFINE_bool if isinstance(default, bool) else
                flags.DEFINE_integer if isinstance(default, int) else
                flags.DEFINE_float if isinstance(default, float) else flags.DEFINE_string)
      define(name, default, help_text, flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> Config:
  """The frozen Config described by the parsed flags."""
  values = {section: {} for section in _SECTIONS}
  for name, (section, field, _) in _FIELDS.items():
    values[section][field] = flag_values[name].value
  values['']['mode'] = config_lib.Mode(values['']['mode'])
  values['data']['tfds_data_dir'] = values['data']['tfds_data_dir'] or None
  nested = {section: cls(**values[section]) for section, cls in _SECTIONS.items() if section}
  return Config(**values[''], **nested)


def config_from_argv(argv: list[str]) -> Config:
  """The Config that `l2tl-train` would build from `argv` (argv[0] is the program).

  Parses into private FlagValues, so callers (benchmarks, pipelines) never
  touch the process-wide flags.
  """
  flag_values = flags.FlagValues()
  define_flags(flag_values=flag_values)
  flag_values(argv)
  return config_from_flags(flag_values)


def check_command_line(argv, required=()) -> None:
  """Rejects stray positional arguments and missing required flags.

  Raises:
    app.UsageError: naming the argument or flag.
  """
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name in required:
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required.')
