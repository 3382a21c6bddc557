"""The L2TL policy: input-free categorical distributions over loss weights.

For each source class c a categorical over n levels gives lambda(c) = k/(n-1);
one more categorical over n' levels gives alpha_s = beta*k'/(n'-1) (Sec. 4).
The logits are plain tf.Variables (Phi). Actions are sampled once per step
with a stateless RNG keyed by (seed, step), so every replica and a resumed run
draw the same actions. REINFORCE (Williams, 1992) with a moving-average
baseline b (decay gamma) and Adam updates the logits from the reward.
"""

from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from l2tl_tf.config import PolicyConfig


class Actions(NamedTuple):
  """One draw of the policy: a level per source class and one for alpha_s."""
  lambda_levels: tf.Tensor  # int32 [C_S]
  alpha_level: tf.Tensor    # int32 []


class PolicyStats(NamedTuple):
  """What one REINFORCE update saw, for summaries."""
  reward: tf.Tensor
  baseline: tf.Tensor
  advantage: tf.Tensor
  log_prob: tf.Tensor


class Policy(tf.Module):
  """Phi: logits for lambda (per source class) and alpha_s, plus the baseline.

  Build it inside `strategy.scope()` (the Adam optimizer captures the strategy).
  """

  def __init__(self, num_source_classes: int, config: PolicyConfig, seed: int):
    super().__init__(name='policy')
    self.config = config
    self.num_source_classes = num_source_classes
    self.seed = int(seed) % (2**31 - 1)
    self.lambda_logits = tf.Variable(
        tf.zeros([num_source_classes, config.num_lambda_levels]), name='lambda_logits')
    self.alpha_logits = tf.Variable(tf.zeros([config.num_alpha_levels]), name='alpha_logits')
    # b_t and, for the official zero-debiased EMA, its normaliser.
    self.baseline = tf.Variable(0.0, trainable=False, name='baseline')
    self.baseline_weight = tf.Variable(0.0, trainable=False, name='baseline_weight')
    self.optimizer = keras.optimizers.Adam(config.learning_rate)
    self.optimizer.build([self.lambda_logits, self.alpha_logits])
    self.per_class_credit = config.lambda_credit == 'first_order'
    if self.per_class_credit:
      self.credit_rate = config.credit_learning_rate or config.learning_rate
      if config.credit_optimizer == 'sgd':
        self.lambda_optimizer = keras.optimizers.SGD(self.credit_rate)
        self.lambda_optimizer.build([self.lambda_logits])
      else:  # Adam's moments per logit, updated only on the rows of present classes
        self.credit_moment = tf.Variable(tf.zeros_like(self.lambda_logits), trainable=False,
                                         name='credit_moment')
        self.credit_velocity = tf.Variable(tf.zeros_like(self.lambda_logits), trainable=False,
                                           name='credit_velocity')
        self.credit_iterations = tf.Variable(0, dtype=tf.int64, trainable=False,
                                             name='credit_iterations')
    if config.alpha_credit == 'first_order':
      # Running mean square of alpha's first-order value (0: none seen yet).
      self.alpha_credit_square = tf.Variable(0.0, trainable=False, name='alpha_credit_square')

  def set_lambda_prior(self, weights, strength: float) -> None:
    """Starts class c's categorical near lambda = weights[c].

    logit_k = -strength * (lambda_k - w_c)^2: expected lambda rises with w_c,
    strength 0 is the paper's uniform start (lambda_prior.py says why).
    """
    levels = self.lambda_values(tf.range(self.config.num_lambda_levels))
    weights = tf.convert_to_tensor(weights, tf.float32)[:, None]
    self.lambda_logits.assign(-float(strength) * tf.square(levels[None, :] - weights))

  # ------------------------------------------------------------ values

  def lambda_values(self, levels: tf.Tensor) -> tf.Tensor:
    """lambda for integer levels: k/(n-1) (paper) or k/n (official)."""
    n = self.config.num_lambda_levels
    denominator = float(n - 1 if self.config.level_values == 'paper' else n)
    return tf.cast(levels, tf.float32) / denominator

  def alpha_values(self, levels: tf.Tensor) -> tf.Tensor:
    """alpha_s for integer levels: beta*k'/(n'-1) (paper) or k'/divisor."""
    levels = tf.cast(levels, tf.float32)
    if self.config.level_values == 'paper':
      return self.config.alpha_beta * levels / float(self.config.num_alpha_levels - 1)
    return levels / self.config.alpha_divisor

  # ------------------------------------------------------------ sampling

  def step_seed(self, step: tf.Tensor) -> tf.Tensor:
    """int32 [2] seed for a step: XLA has no int64 stateless-categorical kernel."""
    step = tf.cast(tf.math.floormod(tf.cast(step, tf.int64), 2**31 - 1), tf.int32)
    return tf.stack([tf.constant(self.seed, tf.int32), step])

  def sample(self, seed: tf.Tensor, num_samples: int = 1) -> Actions:
    """Draws `num_samples` joint actions (leading axis dropped when 1).

    Call this in cross-replica context and pass the actions into the replica
    function: sampling inside `strategy.run` would differ per replica.
    """
    lambda_seed, alpha_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    lambda_levels = tf.random.stateless_categorical(
        self.lambda_logits, num_samples, tf.cast(lambda_seed, tf.int32), dtype=tf.int32)
    alpha_levels = tf.random.stateless_categorical(
        self.alpha_logits[None], num_samples, tf.cast(alpha_seed, tf.int32), dtype=tf.int32)
    lambda_levels = tf.transpose(lambda_levels)  # [num_samples, C_S]
    alpha_levels = alpha_levels[0]               # [num_samples]
    if num_samples == 1:
      return Actions(lambda_levels[0], alpha_levels[0])
    return Actions(lambda_levels, alpha_levels)

  # ------------------------------------------------------------ statistics

  def log_prob(self, actions: Actions, learn_lambda: bool = True,
               learn_alpha: bool = True) -> tf.Tensor:
    """log pi(actions); the lambda part summed (or averaged) over classes."""
    total = tf.constant(0.0)
    if learn_lambda:
      per_class = -tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=actions.lambda_levels, logits=self.lambda_logits)
      reduce = tf.reduce_sum if self.config.log_prob_reduction == 'sum' else tf.reduce_mean
      total += reduce(per_class)
    if learn_alpha:
      total += tf.nn.log_softmax(self.alpha_logits)[actions.alpha_level]
    return total

  def lambda_entropy(self) -> tf.Tensor:
    """Mean over source classes of the entropy of lambda's categorical (nats)."""
    return tf.reduce_mean(_entropy(self.lambda_logits))

  def alpha_entropy(self) -> tf.Tensor:
    return _entropy(self.alpha_logits)

  def expected_lambda(self) -> tf.Tensor:
    """E[lambda(c)] for every source class, exactly from the logits."""
    n = self.config.num_lambda_levels
    probs = tf.nn.softmax(self.lambda_logits)
    return tf.linalg.matvec(probs, self.lambda_values(tf.range(n)))

  def expected_alpha(self) -> tf.Tensor:
    probs = tf.nn.softmax(self.alpha_logits)
    return tf.reduce_sum(probs * self.alpha_values(tf.range(self.config.num_alpha_levels)))

  # ------------------------------------------------------------ learning

  def update(self, actions: Actions, reward: tf.Tensor, learn_lambda: bool = True,
             learn_alpha: bool = True) -> PolicyStats:
    """One REINFORCE step: ascend (R - b) * grad log pi(actions), then move b.

    'paper' baseline: A_t = R_t - b_t with b_t the moving average of earlier
    rewards (initialised to the first reward), then b <- (1-gamma) b + gamma R.
    'official': b is a zero-debiased EMA that includes R_t before A_t is taken.
    """
    reward = tf.cast(reward, tf.float32)
    baseline = self._advance_baseline(reward)
    advantage = reward - baseline
    with tf.GradientTape() as tape:
      log_prob = self.log_prob(actions, learn_lambda, learn_alpha)
      loss = -tf.stop_gradient(advantage) * log_prob
    variables = [self.lambda_logits, self.alpha_logits]
    gradients = tape.gradient(loss, variables, unconnected_gradients='zero')
    self.optimizer.apply_gradients(zip(gradients, variables))
    return PolicyStats(reward, baseline, advantage, log_prob)

  def update_per_class(self, actions: Actions, class_advantages: tf.Tensor,
                       reward: tf.Tensor, learn_alpha: bool = True,
                       alpha_value: Optional[tf.Tensor] = None,
                       present: Optional[tf.Tensor] = None) -> PolicyStats:
    """lambda from per-class advantages A_c; alpha_s from the scalar reward or `alpha_value`.

    A_c values a unit of lambda(c) (the first-order credit of class c's
    candidates), so the surrogate reward of class c's action is lambda(a_c) A_c.
    'reinforce': ascend A_c (lambda(a_c) - E[lambda(c)]) grad log pi(a_c);
    'expected': ascend A_c grad E[lambda(c)], the same gradient in expectation.
    Only the classes in `present` (bool [C_S]; default: a non-zero advantage)
    move: the others had no candidate, so the step says nothing about them.
    """
    by_value = learn_alpha and alpha_value is not None
    stats = self.update(actions, reward, learn_lambda=False,
                        learn_alpha=learn_alpha and not by_value)
    if by_value:
      self._update_alpha_first_order(alpha_value)
    advantages = tf.stop_gradient(tf.cast(class_advantages, tf.float32))
    with tf.GradientTape() as tape:
      expected = self.expected_lambda()
      if self.config.credit_estimator == 'expected':
        objective = tf.reduce_sum(advantages * expected)
      else:
        log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=actions.lambda_levels, logits=self.lambda_logits)
        deviation = self.lambda_values(actions.lambda_levels) - tf.stop_gradient(expected)
        objective = tf.reduce_sum(advantages * deviation * log_probs)
      loss = -objective
    gradient = tape.gradient(loss, self.lambda_logits)
    if present is None:
      present = tf.not_equal(advantages, 0.0)
    if self.config.credit_optimizer == 'sgd':  # absent rows: zero gradient, no momentum
      self.lambda_optimizer.apply_gradients([(gradient, self.lambda_logits)])
    else:
      self._lazy_adam_step(gradient, present)
    return stats

  def _lazy_adam_step(self, gradient: tf.Tensor, present: tf.Tensor) -> None:
    """Keras' Adam on the rows of present classes; other rows and their moments stay.

    A plain Adam over the whole [C_S, n] logits keeps moving every class by its
    first moment for many steps after its last candidate: with 1,368 classes
    and 160 candidates a step, most of a class's movement would come from steps
    that said nothing about it. Equal to keras.optimizers.Adam when every class
    is present (same defaults: beta1 0.9, beta2 0.999, epsilon 1e-7).
    """
    beta_1, beta_2, epsilon = 0.9, 0.999, 1e-7
    rows = tf.reshape(present, [-1, 1])
    self.credit_iterations.assign_add(1)
    step = tf.cast(self.credit_iterations, tf.float32)
    moment = tf.where(rows, beta_1 * self.credit_moment + (1.0 - beta_1) * gradient,
                      self.credit_moment)
    velocity = tf.where(rows, beta_2 * self.credit_velocity + (1.0 - beta_2) * gradient**2,
                        self.credit_velocity)
    self.credit_moment.assign(moment)
    self.credit_velocity.assign(velocity)
    rate = self.credit_rate * tf.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
    update = rate * moment / (tf.sqrt(velocity) + epsilon)
    self.lambda_logits.assign_sub(tf.where(rows, update, tf.zeros_like(update)))

  def _update_alpha_first_order(self, value: tf.Tensor) -> None:
    """Moves alpha_s towards larger values when a unit of it lowers the validation loss.

    `value` (first-order drop of the validation loss per unit of alpha_s) is
    divided by its running RMS (decay gamma, started at the first value), so
    the step size does not depend on the loss's scale, which shrinks as
    training fits. The step is the natural policy gradient of the surrogate
    reward value * alpha(a) for a softmax over levels: every logit moves by
    rate * value * (alpha_k - E[alpha]) / max alpha, i.e. multiplicative
    weights on the levels, whatever their current probabilities. (The plain
    gradient would scale by p_k, about 1/n' here, and barely move.)
    """
    value = tf.cast(value, tf.float32)
    gamma = self.config.baseline_decay
    square = tf.where(self.alpha_credit_square > 0.0,
                      (1.0 - gamma) * self.alpha_credit_square + gamma * value * value,
                      value * value)
    self.alpha_credit_square.assign(square)
    normalised = tf.math.divide_no_nan(value, tf.sqrt(square))
    levels = self.alpha_values(tf.range(self.config.num_alpha_levels))
    top = tf.reduce_max(levels)
    step = self.config.alpha_credit_rate * normalised * tf.math.divide_no_nan(
        levels - self.expected_alpha(), top)
    self.alpha_logits.assign_add(step)

  def _advance_baseline(self, reward: tf.Tensor) -> tf.Tensor:
    """Updates b and returns the baseline the advantage is taken against."""
    gamma = self.config.baseline_decay
    if self.config.baseline_style == 'official':
      self.baseline.assign((1.0 - gamma) * self.baseline + gamma * reward)
      self.baseline_weight.assign((1.0 - gamma) * self.baseline_weight + gamma)
      return self.baseline / self.baseline_weight
    first = tf.equal(self.baseline_weight, 0.0)
    previous = tf.where(first, reward, self.baseline)
    self.baseline.assign((1.0 - gamma) * previous + gamma * reward)
    self.baseline_weight.assign(1.0)
    return previous


def _entropy(logits: tf.Tensor) -> tf.Tensor:
  log_probs = tf.nn.log_softmax(logits)
  return -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)


# One draw of the ranking's actions up to this many bytes (levels, values and
# numpy's statistics: about 21 bytes per class and sample, measured); above it
# the draws come in chunks, so the paper's JFT source (18,291 classes x 10,000
# samples, about 3.8 GB in one draw) ranks in bounded memory on every worker.
RANKING_DRAW_BYTES = 512 * 2**20
_RANKING_BYTES_PER_DRAW = 24


def sampled_class_weights(policy: Policy, num_samples: int = 10_000,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of lambda per source class over sampled actions (Sec. 5.1).

  The paper ranks source classes by sampling 10k actions; the mean converges
  to `expected_lambda` and the std says how settled each class is. Draws that
  fit RANKING_DRAW_BYTES are one call (every benchmark ranking); larger ones
  are summed chunk by chunk in float64.
  """
  num_classes = int(policy.lambda_logits.shape[0])
  chunk = max(1, RANKING_DRAW_BYTES // (_RANKING_BYTES_PER_DRAW * num_classes))
  if num_samples <= chunk:
    values = _lambda_draws(policy, num_samples, [seed % (2**31 - 1), 7])
    return values.mean(axis=0), values.std(axis=0)
  total = np.zeros(num_classes)
  squares = np.zeros(num_classes)
  for index, start in enumerate(range(0, num_samples, chunk)):
    values = _lambda_draws(policy, min(chunk, num_samples - start),
                           [seed % (2**31 - 1), 7 + index]).astype(np.float64)
    total += values.sum(axis=0)
    squares += np.square(values).sum(axis=0)
  mean = total / num_samples
  std = np.sqrt(np.maximum(squares / num_samples - np.square(mean), 0.0))
  return mean.astype(np.float32), std.astype(np.float32)


def _lambda_draws(policy: Policy, num_samples: int, seed: list[int]) -> np.ndarray:
  """lambda values of `num_samples` sampled actions, shape [num_samples, C_S]."""
  draws = policy.sample(tf.constant(seed, tf.int32), num_samples)
  values = policy.lambda_values(draws.lambda_levels).numpy()
  return values.reshape(num_samples, -1)
