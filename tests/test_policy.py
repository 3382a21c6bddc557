"""Policy math: values, log-prob, entropy, sampling, REINFORCE and baselines."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2tl_tf.config import PolicyConfig
from l2tl_tf import policy as policy_module
from l2tl_tf.policy import Actions, Policy, sampled_class_weights


def make_policy(num_classes=3, **overrides):
  config = PolicyConfig(**{'num_lambda_levels': 4, 'num_alpha_levels': 5, **overrides})
  return Policy(num_classes, config, seed=1)


def test_level_values_follow_the_paper_and_the_official_code():
  paper = make_policy()
  np.testing.assert_allclose(paper.lambda_values(tf.range(4)), [0, 1 / 3, 2 / 3, 1])
  np.testing.assert_allclose(paper.alpha_values(tf.range(5)), [0, 0.125, 0.25, 0.375, 0.5])
  official = make_policy(level_values='official', alpha_divisor=100.0)
  np.testing.assert_allclose(official.lambda_values(tf.range(4)), [0, 0.25, 0.5, 0.75])
  np.testing.assert_allclose(official.alpha_values(tf.range(5)), [0, 0.01, 0.02, 0.03, 0.04])


def test_log_prob_and_entropy_match_numpy():
  policy = make_policy()
  rng = np.random.default_rng(0)
  policy.lambda_logits.assign(rng.normal(size=(3, 4)).astype(np.float32))
  policy.alpha_logits.assign(rng.normal(size=5).astype(np.float32))
  actions = Actions(tf.constant([0, 3, 1]), tf.constant(2))

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  lam = log_softmax(policy.lambda_logits.numpy())
  alp = log_softmax(policy.alpha_logits.numpy())
  expected = lam[0, 0] + lam[1, 3] + lam[2, 1] + alp[2]
  np.testing.assert_allclose(policy.log_prob(actions), expected, rtol=1e-5)
  np.testing.assert_allclose(policy.log_prob(actions, learn_lambda=False), alp[2], rtol=1e-5)
  np.testing.assert_allclose(
      policy.lambda_entropy(), np.mean(-(np.exp(lam) * lam).sum(-1)), rtol=1e-5)
  np.testing.assert_allclose(policy.alpha_entropy(), -(np.exp(alp) * alp).sum(), rtol=1e-5)
  mean_policy = make_policy(log_prob_reduction='mean')
  mean_policy.lambda_logits.assign(policy.lambda_logits)
  np.testing.assert_allclose(mean_policy.log_prob(actions, learn_alpha=False),
                             (lam[0, 0] + lam[1, 3] + lam[2, 1]) / 3, rtol=1e-5)


def test_uniform_policy_has_maximal_entropy_and_mid_expected_lambda():
  policy = make_policy()
  np.testing.assert_allclose(policy.lambda_entropy(), np.log(4), rtol=1e-6)
  np.testing.assert_allclose(policy.expected_lambda(), [0.5, 0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(policy.expected_alpha(), 0.25, rtol=1e-6)


def test_sampling_is_a_pure_function_of_seed_and_step():
  policy = make_policy(num_classes=50)
  a = policy.sample(policy.step_seed(tf.constant(7, tf.int64)))
  b = policy.sample(policy.step_seed(tf.constant(7, tf.int64)))
  c = policy.sample(policy.step_seed(tf.constant(8, tf.int64)))
  np.testing.assert_array_equal(a.lambda_levels, b.lambda_levels)
  assert int(a.alpha_level) == int(b.alpha_level)
  assert not np.array_equal(a.lambda_levels, c.lambda_levels)
  assert a.lambda_levels.dtype == tf.int32 and a.lambda_levels.shape == (50,)


def test_sampling_compiles_with_xla_and_stays_deterministic():
  """int32 seeds let XLA compile the sampler (XLA's RNG differs from the eager one)."""
  policy = make_policy(num_classes=10)
  sample = tf.function(lambda step: policy.sample(policy.step_seed(step)).lambda_levels,
                       jit_compile=True)
  first = sample(tf.constant(3, tf.int64)).numpy()
  np.testing.assert_array_equal(sample(tf.constant(3, tf.int64)), first)
  assert first.min() >= 0 and first.max() < 4


def test_sampled_weights_converge_to_expected_lambda():
  policy = make_policy(num_classes=4)
  policy.lambda_logits.assign([[3.0, 0, 0, 0], [0, 0, 0, 3.0], [0, 0, 0, 0], [0, 3.0, 0, 0]])
  means, stds = sampled_class_weights(policy, num_samples=10_000)
  np.testing.assert_allclose(means, policy.expected_lambda(), atol=0.02)
  assert stds[2] > stds[0]


def test_one_sample_still_gives_a_weight_per_class():
  policy = make_policy(num_classes=4)
  means, stds = sampled_class_weights(policy, num_samples=1)
  assert means.shape == stds.shape == (4,)
  assert set(means.tolist()) <= set(policy.lambda_values(tf.range(4)).numpy().tolist())
  np.testing.assert_array_equal(stds, 0.0)


def test_large_rankings_are_drawn_in_chunks_with_the_same_statistics(monkeypatch):
  """Above RANKING_DRAW_BYTES the draws come in chunks (bounded memory for JFT's 18k classes)."""
  policy = make_policy(num_classes=4)
  policy.lambda_logits.assign([[3.0, 0, 0, 0], [0, 0, 0, 3.0], [0, 0, 0, 0], [0, 3.0, 0, 0]])
  whole_means, whole_stds = sampled_class_weights(policy, num_samples=20_000)
  draws = []
  sample = policy.sample
  monkeypatch.setattr(policy, 'sample', lambda seed, n: draws.append(n) or sample(seed, n))
  monkeypatch.setattr(policy_module, 'RANKING_DRAW_BYTES', 4 * 24 * 3_000)
  means, stds = sampled_class_weights(policy, num_samples=20_000)
  assert draws == [3_000] * 6 + [2_000]
  np.testing.assert_allclose(means, policy.expected_lambda(), atol=0.02)
  np.testing.assert_allclose(means, whole_means, atol=0.02)
  np.testing.assert_allclose(stds, whole_stds, atol=0.02)


def test_paper_baseline_starts_at_first_reward_then_decays():
  policy = make_policy(baseline_decay=0.5)
  actions = policy.sample(policy.step_seed(tf.constant(0, tf.int64)))
  first = policy.update(actions, tf.constant(0.4))
  assert float(first.baseline) == pytest.approx(0.4)
  assert float(first.advantage) == pytest.approx(0.0)
  second = policy.update(actions, tf.constant(0.8))
  assert float(second.baseline) == pytest.approx(0.4)
  assert float(second.advantage) == pytest.approx(0.4)
  assert float(policy.baseline) == pytest.approx(0.6)


def test_official_baseline_is_a_debiased_ema_including_the_reward():
  policy = make_policy(baseline_style='official', baseline_decay=0.1)
  actions = policy.sample(policy.step_seed(tf.constant(0, tf.int64)))
  first = policy.update(actions, tf.constant(0.5))
  assert float(first.baseline) == pytest.approx(0.5)
  second = policy.update(actions, tf.constant(1.0))
  expected = (0.9 * 0.1 * 0.5 + 0.1 * 1.0) / (0.9 * 0.1 + 0.1)
  assert float(second.baseline) == pytest.approx(expected, rel=1e-5)


def test_reinforce_moves_probability_toward_the_rewarded_action():
  """A toy bandit: class 0 is rewarded for high lambda, class 1 for low."""
  policy = make_policy(num_classes=2, num_lambda_levels=2, learning_rate=0.05,
                       baseline_decay=0.1)
  update = tf.function(policy.update)
  for step in range(300):
    actions = policy.sample(policy.step_seed(tf.constant(step, tf.int64)))
    levels = actions.lambda_levels.numpy()
    reward = 0.5 * levels[0] + 0.5 * (1 - levels[1]) + 0.1 * np.random.default_rng(step).normal()
    update(actions, tf.constant(reward, tf.float32))
  expected = policy.expected_lambda().numpy()
  assert expected[0] > 0.85, expected
  assert expected[1] < 0.15, expected


def test_update_without_lambda_learning_leaves_lambda_logits_alone():
  policy = make_policy()
  before = policy.lambda_logits.numpy().copy()
  for step in range(3):
    actions = policy.sample(policy.step_seed(tf.constant(step, tf.int64)))
    policy.update(actions, tf.constant(float(step)), learn_lambda=False)
  np.testing.assert_array_equal(policy.lambda_logits.numpy(), before)
  assert not np.allclose(policy.alpha_logits.numpy(), 0.0)


@pytest.mark.parametrize('estimator', ['reinforce', 'expected'])
def test_per_class_credit_raises_lambda_where_the_advantage_is_positive(estimator):
  """First-order credit: class 0 has a positive advantage, class 1 a negative one."""
  policy = make_policy(num_classes=3, lambda_credit='first_order', credit_estimator=estimator,
                       credit_optimizer='sgd', credit_learning_rate=0.5)
  update = tf.function(policy.update_per_class)
  advantages = tf.constant([2.0, -2.0, 0.0])
  alpha_before = policy.alpha_logits.numpy().copy()
  for step in range(200):
    actions = policy.sample(policy.step_seed(tf.constant(step, tf.int64)))
    update(actions, advantages, tf.constant(float(step % 3)))
  expected = policy.expected_lambda().numpy()
  assert expected[0] > 0.8 and expected[1] < 0.2, expected
  assert abs(expected[2] - 0.5) < 0.1 + (0.15 if estimator == 'reinforce' else 0.0), expected
  assert not np.allclose(policy.alpha_logits.numpy(), alpha_before)  # alpha: scalar reward


def test_adam_credit_moves_only_classes_with_candidates_and_is_adam_when_all_are():
  """Adam over the whole logits kept moving absent classes by their first moment."""
  policy = make_policy(num_classes=3, lambda_credit='first_order', credit_estimator='expected',
                       credit_optimizer='adam', credit_learning_rate=0.05)
  reference = tf.Variable(tf.zeros([3, 4]))
  adam = keras.optimizers.Adam(0.05)
  actions = policy.sample(policy.step_seed(tf.constant(0, tf.int64)))
  update = tf.function(policy.update_per_class)
  update(actions, tf.constant([1.0, -1.0, 0.5]), tf.constant(0.5),
         present=tf.constant([True, True, True]))
  with tf.GradientTape() as tape:
    loss = -tf.reduce_sum(tf.constant([1.0, -1.0, 0.5]) * tf.reduce_sum(
        tf.nn.softmax(reference) * policy.lambda_values(tf.range(4)), -1))
  adam.apply_gradients([(tape.gradient(loss, reference), reference)])
  np.testing.assert_allclose(policy.lambda_logits.numpy(), reference.numpy(), rtol=1e-5,
                             atol=1e-7)
  before = policy.lambda_logits.numpy()
  for step in range(1, 6):  # classes 0 and 1 have no candidates from here on
    update(actions, tf.constant([0.0, 0.0, 0.5]), tf.constant(0.5),
           present=tf.constant([False, False, True]))
  after = policy.lambda_logits.numpy()
  np.testing.assert_array_equal(after[:2], before[:2])
  assert not np.allclose(after[2], before[2])


def _alpha_first_order_policy(**overrides):
  return make_policy(num_classes=2, lambda_credit='first_order', alpha_credit='first_order',
                     num_alpha_levels=5, alpha_beta=0.5, **overrides)


@pytest.mark.parametrize('sign', [1.0, -1.0])
def test_alpha_first_order_credit_follows_the_sign_of_its_value(sign):
  """A source that lowers the validation loss raises alpha_s; one that raises it, lowers it."""
  policy = _alpha_first_order_policy(alpha_credit_rate=0.5)
  update = tf.function(policy.update_per_class)
  for step in range(40):
    actions = policy.sample(policy.step_seed(tf.constant(step, tf.int64)))
    # Magnitudes shrink 100x over the run, as the loss does: the RMS keeps the steps alive.
    value = sign * (1.0 + 0.5 * np.sin(step)) * 0.9**step
    update(actions, tf.zeros([2]), tf.constant(0.5), alpha_value=tf.constant(value, tf.float32))
  expected = float(policy.expected_alpha().numpy())
  assert (expected > 0.4) if sign > 0 else (expected < 0.1), expected


def test_alpha_first_order_step_is_the_natural_gradient_of_expected_alpha():
  """First step: logits move by rate * sign * (alpha_k - E[alpha]) / max alpha."""
  policy = _alpha_first_order_policy(alpha_credit_rate=0.3)
  actions = policy.sample(policy.step_seed(tf.constant(0, tf.int64)))
  policy.update_per_class(actions, tf.zeros([2]), tf.constant(0.5),
                          alpha_value=tf.constant(-7.0))
  levels = np.array([0.0, 0.125, 0.25, 0.375, 0.5])
  np.testing.assert_allclose(policy.alpha_logits.numpy(), -0.3 * (levels - 0.25) / 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(policy.alpha_credit_square.numpy(), 49.0)


def test_alpha_first_order_credit_ignores_the_scalar_reward():
  policy = _alpha_first_order_policy()
  for step in range(5):
    actions = policy.sample(policy.step_seed(tf.constant(step, tf.int64)))
    policy.update_per_class(actions, tf.zeros([2]), tf.constant(float(step)),
                            alpha_value=tf.constant(0.0))
  np.testing.assert_array_equal(policy.alpha_logits.numpy(), np.zeros(5))
