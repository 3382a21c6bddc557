"""Config.validate: the speed options refuse combinations that cannot run."""

import dataclasses

import pytest

from conftest import tiny_config
from l2tl_tf import config as config_lib


@pytest.mark.parametrize('overrides, message', [
    (dict(source_decode='lazy'), "--source_decode='lazy'"),
    (dict(selection='everywhere'), "--selection='everywhere'"),
    (dict(precision='float16'), "--precision='float16'"),
    (dict(selection='global', source_decode='pipeline'), 'needs --source_decode=after_select'),
    (dict(strategy='tpu', tpu='local'), 'use --source_decode=pipeline on TPU'),
    (dict(jit_compile=True, strategy='mirrored'), 'XLA fails under MirroredStrategy'),
    (dict(jit_compile=True, deterministic=True), 'XLA has no deterministic kernels'),
])
def test_speed_options_reject_combinations_that_cannot_run(tiny_data, tmp_path, overrides,
                                                           message):
  config = tiny_config(tiny_data, tmp_path, **overrides)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_tpu_with_pipeline_decoding_and_no_selection_are_accepted(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path, strategy='tpu', tpu='local',
                       source_decode='pipeline')
  config_lib.validate(config)
  # Fine-tuning reads no candidates to select from, so nothing is decoded in the step.
  config_lib.validate(dataclasses.replace(config, source_decode='after_select',
                                          mode=config_lib.Mode.FINETUNE,
                                          warm_start_from='somewhere'))


def test_decoding_after_selection_applies_only_when_the_step_selects(tiny_data, tmp_path):
  assert tiny_config(tiny_data, tmp_path).decodes_after_select
  assert not tiny_config(tiny_data, tmp_path, source_batch_multiplier=1).decodes_after_select
  assert not tiny_config(tiny_data, tmp_path, mode='uniform').decodes_after_select
  assert not tiny_config(tiny_data, tmp_path, mode='pretrain').decodes_after_select
  scored = tiny_config(tiny_data, tmp_path)
  scored = dataclasses.replace(scored, policy=dataclasses.replace(
      scored.policy, lambda_credit='first_order'))
  assert not scored.decodes_after_select  # every candidate is scored, so decoded


@pytest.mark.parametrize('policy, message', [
    (dict(alpha_credit='first_order'), 'reuses the candidate scores'),
    (dict(alpha_credit='first_order', lambda_credit='first_order', alpha_credit_rate=0.0),
     'alpha_credit_rate=0.0 must be > 0'),
    (dict(alpha_credit='gradient'), "--alpha_credit='gradient'"),
])
def test_alpha_credit_refuses_settings_it_cannot_use(tiny_data, tmp_path, policy, message):
  config = tiny_config(tiny_data, tmp_path)
  config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, **policy))
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_source_loss_scaling_names_the_choices(tiny_data, tmp_path):
  config = tiny_config(tiny_data, tmp_path)
  config = dataclasses.replace(config, optimizer=dataclasses.replace(
      config.optimizer, source_loss_scaling='adaptive'))
  with pytest.raises(ValueError, match="--source_loss_scaling='adaptive': use one of "
                                       'none, target_ratio'):
    config_lib.validate(config)


def _with(config, section, **changes):
  if not section:
    return dataclasses.replace(config, **changes)
  return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section),
                                                                     **changes)})


@pytest.mark.parametrize('overrides, message', [
    # 0 divided by zero after config.json was written; -1 looped forever.
    (dict(checkpoint_every=0), '--checkpoint_every=0 must be > 0'),
    (dict(checkpoint_every=-1), '--checkpoint_every=-1 must be > 0'),
    (dict(keep_checkpoints=0), '--keep_checkpoints=0 must be >= 1'),
    (dict(eval_every=-5), '--eval_every=-5 must be >= 0'),
    (dict(eval_batch_size=0), '--eval_batch_size=0 must be > 0'),
])
def test_loop_cadences_that_cannot_run_are_refused(tiny_data, tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(tiny_config(tiny_data, tmp_path, **overrides))


@pytest.mark.parametrize('section, changes, message', [
    ('data', dict(val_examples_per_class=-2), '--val_examples_per_class=-2 must be >= 0'),
    ('policy', dict(alpha_beta=0.0), r'--alpha_beta=0.0 must be > 0'),
    ('policy', dict(learning_rate=-1e-4), r'--policy_learning_rate=-0.0001 must be >= 0'),
    # Each of these wrote config.json and then failed, diverged or trained wrongly; the
    # corrected command was then refused as "a run with other settings".
    ('optimizer', dict(momentum=1.5), r'--momentum=1.5 must be in \[0, 1\]'),
    ('optimizer', dict(learning_rate=-0.05), r'--learning_rate=-0.05 must be >= 0'),
    ('optimizer', dict(weight_decay=-1.0), r'--weight_decay=-1.0 must be >= 0'),
    ('data', dict(shuffle_buffer=0), r'--shuffle_buffer=0 must be >= 1'),
    ('', dict(seed=-1), r'--seed=-1 must be in \[0, 2\*\*32\)'),
    ('policy', dict(level_values='official', alpha_divisor=0.0),
     r'--alpha_divisor=0.0 must be > 0'),
    ('policy', dict(lambda_prior_strength=float('inf')),
     r'--lambda_prior_strength=inf must be a finite number'),
    ('policy', dict(baseline_style='official', baseline_decay=1.0),
     r'every advantage is 0'),
])
def test_negative_sizes_and_rates_are_refused(tiny_data, tmp_path, section, changes, message):
  config = _with(tiny_config(tiny_data, tmp_path), section, **changes)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def test_a_validation_curve_without_a_validation_set_is_refused(tiny_data, tmp_path):
  """Before, scratch with --eval_every trained its first loop and then failed."""
  config = _with(tiny_config(tiny_data, tmp_path, mode='scratch', eval_every=2), 'data',
                 val_examples_per_class=0, target_val='')
  with pytest.raises(ValueError, match='--eval_every=2 asks for validation curves but there is '
                     'no validation set'):
    config_lib.validate(config)
  config_lib.validate(dataclasses.replace(config, eval_every=0))


@pytest.mark.parametrize('changes, message', [
    (dict(examples_per_class=-1), r'--examples_per_class=-1 must be >= 0'),  # meant "all"
    (dict(target_val='val-*', val_examples_per_class=5),
     r'--target_val and --val_examples_per_class=5 both give a validation set'),
])
def test_subset_sizes_that_would_be_misread_are_refused(tiny_data, tmp_path, changes, message):
  config = _with(tiny_config(tiny_data, tmp_path), 'data', **changes)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)
