"""Step functions: one L2TL iteration (Algorithm 1) and its baselines.

The step is written once in cross-replica form, as in orbit's StandardTrainer:
`train_loop` runs `steps_per_loop` steps inside one tf.function (the count is
a Tensor, so it never retraces); each step samples the policy once, runs
`strategy.run(replica_train_step)` for the SGD update of g, h_S and h_T, then
measures the reward in inference mode and updates the policy. The trainer
knows nothing about files or schedules: `loop.py` owns the cadence.
"""

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from l2tl_tf import input_pipeline, models
from l2tl_tf.config import Config
from l2tl_tf.policy import Actions, Policy

# Metrics returned by `train_loop`, averaged over the loop's steps.
METRIC_NAMES = ('loss/total', 'loss/source', 'loss/target', 'loss/weight_decay',
                'loss/source_scale',
                'policy/reward', 'policy/baseline', 'policy/advantage', 'policy/alpha',
                'policy/mean_lambda_kept', 'learning_rate')


def select_top_weighted(weights: tf.Tensor, k: int) -> tf.Tensor:
  """Indices of the k largest weights (ties keep the earlier, shuffled, example).

  This is the paper's selection of the top B_S of M_S * B_S candidates.
  """
  return tf.math.top_k(weights, k=k, sorted=False).indices


def normalise_source_weights(weights: tf.Tensor, mode: str) -> tf.Tensor:
  """Scales kept lambda weights; all-zero weights stay zero (never NaN).

  'none' keeps lambda as sampled (Eq. 1). 'mean_one' rescales the global batch
  to mean 1 (the official code), all-reducing the sum across replicas.
  """
  if mode == 'none':
    return weights
  local = tf.stack([tf.reduce_sum(weights), tf.cast(tf.size(weights), tf.float32)])
  context = tf.distribute.get_replica_context()
  total = context.all_reduce(tf.distribute.ReduceOp.SUM, local) if context else local
  return tf.math.divide_no_nan(weights * total[1], total[0])


def mean_auc(labels: tf.Tensor, scores: tf.Tensor, num_classes: int) -> tf.Tensor:
  """Mean one-vs-rest ROC AUC over classes present (with negatives) in the batch.

  `labels` are class ids [B], or multi-hot [B, C] for a multi-label target
  (then each class's AUC is its own positives against its negatives).
  AUC by the rank-sum (Mann-Whitney) formula with tied scores at their mean
  rank, so a tie counts one half, as in pairwise counting. Saturated softmax
  outputs (exactly 1.0) tie often late in training; ranking them by row order
  would make the reward depend on the batch's order.
  """
  positives = (tf.cast(labels, tf.float32) if labels.shape.rank == 2
               else tf.one_hot(labels, num_classes))
  by_class = tf.transpose(tf.cast(scores, tf.float32))
  ordered = tf.sort(by_class, axis=-1)
  below = tf.searchsorted(ordered, by_class, side='left')
  up_to = tf.searchsorted(ordered, by_class, side='right')
  ranks = tf.transpose(tf.cast(below + up_to + 1, tf.float32) / 2.0)
  num_pos = tf.reduce_sum(positives, axis=0)
  num_neg = tf.cast(tf.shape(labels)[0], tf.float32) - num_pos
  rank_sum = tf.reduce_sum(ranks * positives, axis=0)
  auc = (rank_sum - num_pos * (num_pos + 1.0) / 2.0) / tf.maximum(num_pos * num_neg, 1.0)
  valid = tf.cast((num_pos > 0) & (num_neg > 0), tf.float32)
  return tf.math.divide_no_nan(tf.reduce_sum(auc * valid), tf.reduce_sum(valid))


class Trainer:
  """SGD on g, h_S, h_T and REINFORCE on the policy, for every mode.

  Build inside `strategy.scope()`.
  """

  def __init__(self, config: Config, strategy: tf.distribute.Strategy,
               model: models.TransferModel, policy: Optional[Policy],
               fixed_lambda: Optional[np.ndarray] = None):
    self.config, self.strategy, self.model, self.policy = config, strategy, model, policy
    self.fixed_lambda = (None if fixed_lambda is None
                         else tf.constant(fixed_lambda, tf.float32))
    self.mode = config.mode
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
    self.optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate_schedule(config), momentum=config.optimizer.momentum,
        nesterov=config.optimizer.nesterov)
    self.optimizer.build(model.trainable_variables)
    self._decayed = models.weight_decay_variables(model.trainable_variables)
    self.per_class_credit = bool(policy is not None and policy.per_class_credit
                                 and self.mode.learns_lambda and config.learns_policy)
    # A nested tf.function cannot hold the optimizer's cross-replica
    # all-reduce, so the model step is wrapped only for XLA, which
    # config.validate allows on single-replica strategies alone.
    self._model_update, self._reward_logits = self._model_step, self._reward_forward
    if config.jit_compile:
      self._model_update = tf.function(self._model_step, jit_compile=True)
      self._reward_logits = tf.function(self._reward_forward, jit_compile=True)
    self.train_loop = tf.function(self._train_loop)

  # ------------------------------------------------------------ cross-replica

  def _train_loop(self, iterators: dict, num_steps: tf.Tensor) -> dict:
    """Runs `num_steps` steps; returns each metric's mean over them."""
    totals = {name: tf.constant(0.0) for name in METRIC_NAMES}
    for _ in tf.range(num_steps):
      metrics = self.train_step(iterators)
      totals = {name: totals[name] + metrics[name] for name in METRIC_NAMES}
    count = tf.cast(num_steps, tf.float32)
    return {name: total / count for name, total in totals.items()}

  def train_step(self, iterators: dict) -> dict:
    """One iteration of Algorithm 1 (or its baseline) across all replicas."""
    # The rate this step trains with: after the update the optimizer reports the next one.
    learning_rate = tf.cast(self.optimizer.learning_rate, tf.float32)
    actions = self.policy.sample(self.policy.step_seed(self.step)) if self.policy else None
    inputs = {}
    if self.mode.uses_source:
      inputs['source'] = next(iterators['source'])
      inputs['lambda'], inputs['alpha'] = self._loss_weights(actions)
    if self.mode.uses_target:
      inputs['target'] = next(iterators['target'])
    reward_batch = None
    if self.per_class_credit:
      # One validation batch: its loss gradient scores the candidates before
      # the update, its metric is the reward after it.
      reward_batch = inputs['reward'] = next(iterators['reward'])
    per_replica = self.strategy.run(self.replica_train_step, args=(inputs,))
    metrics = {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
               for name, value in per_replica.items()}
    class_advantages = present = None
    if self.per_class_credit:
      count = metrics.pop('credit_count')
      present = count > 0  # classes with candidates this step
      class_advantages = self._class_advantages(metrics.pop('credit_sum'), count,
                                                metrics.pop('credit_moments'))
    alpha_value = metrics.pop('credit_alpha', None)
    metrics['loss/total'] = (metrics['loss/source'] + metrics['loss/target']
                             + metrics['loss/weight_decay'])
    metrics['policy/alpha'] = inputs['alpha'] if 'alpha' in inputs else tf.constant(0.0)
    metrics['policy/mean_lambda_kept'] = tf.math.divide_no_nan(
        metrics.pop('kept_lambda_sum'), float(self.config.source_batch_size))
    metrics.update(self._policy_metrics(actions, iterators, reward_batch, class_advantages,
                                        alpha_value, present))
    metrics['learning_rate'] = learning_rate
    self.step.assign_add(1)
    return metrics

  def _loss_weights(self, actions: Optional[Actions]):
    """lambda per source class and alpha_s for this step's source loss.

    Without a policy (pretrain), alpha_s = 1 as in Eq. 3's (alpha_s, alpha_t) =
    (1, 0); lambda is 1 unless fixed weights are given.
    """
    if self.fixed_lambda is not None:
      lambdas = self.fixed_lambda
    elif self.mode.samples_lambda:
      lambdas = self.policy.lambda_values(actions.lambda_levels)
    else:
      lambdas = tf.ones([self.config.data.source_num_classes])
    alpha = self.policy.alpha_values(actions.alpha_level) if actions else tf.constant(1.0)
    return lambdas, alpha

  def _policy_metrics(self, actions: Optional[Actions], iterators: dict,
                      reward_batch=None, class_advantages=None, alpha_value=None,
                      present=None) -> dict:
    """Reward on B_P validation examples, then REINFORCE where the mode learns."""
    zero = tf.constant(0.0)
    if actions is None or not self.config.learns_policy:  # no policy, or a frozen replay
      return {'policy/reward': zero, 'policy/baseline': zero, 'policy/advantage': zero}
    reward = self.reward(next(iterators['reward']) if reward_batch is None else reward_batch)
    if class_advantages is not None:
      stats = self.policy.update_per_class(actions, class_advantages, reward,
                                           learn_alpha=self.mode.learns_alpha,
                                           alpha_value=alpha_value, present=present)
    else:
      stats = self.policy.update(actions, reward, learn_lambda=self.mode.learns_lambda,
                                 learn_alpha=self.mode.learns_alpha)
    return {'policy/reward': stats.reward, 'policy/baseline': stats.baseline,
            'policy/advantage': stats.advantage}

  def _class_advantages(self, score_sum, count, moments) -> tf.Tensor:
    """Per-class advantages from the step's candidate scores, standardised.

    Scores are compared within the step: z = (u - mean) / std over all
    candidates, so the drift of every score over training and its scale drop
    out. A class's advantage is the mean (or sum) of its candidates' z; 0 when
    it has no candidate this step.
    """
    total, total_sq, num = tf.unstack(moments)
    mean = total / num
    std = tf.sqrt(tf.maximum(total_sq / num - mean * mean, 1e-12))
    z_sum = (score_sum - count * mean) / std
    if self.config.policy.credit_aggregation == 'sum':
      return z_sum
    return tf.math.divide_no_nan(z_sum, count)

  def reward(self, batch) -> tf.Tensor:
    """R: top-1 accuracy or mean AUC of h_T(g(x)) over the global B_P batch."""
    per_replica = self.strategy.run(self.replica_reward_outputs, args=(batch,))
    if self.config.policy.reward_metric == 'accuracy':
      correct = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[0], axis=None)
      return correct / float(self.config.reward_batch_size)
    labels = self.strategy.gather(per_replica[1], axis=0)
    probabilities = self.strategy.gather(per_replica[2], axis=0)
    return mean_auc(labels, probabilities, self.config.data.target_num_classes)

  # ------------------------------------------------------------ per replica

  def replica_train_step(self, inputs: dict) -> dict:
    """Selection, decoding, then forward, backward and SGD on this replica's share."""
    scores = (self.candidate_scores(inputs['source'], inputs['reward'], inputs['target'])
              if 'reward' in inputs else None)
    credit = {} if scores is None else self._credit_sums(scores, inputs['source'][1])
    source, kept_lambda_sum = None, tf.constant(0.0)
    if 'source' in inputs:
      images, labels, weights, indices = self._kept_source(inputs['source'], inputs['lambda'])
      kept_lambda_sum = tf.reduce_sum(weights)
      weights = normalise_source_weights(
          weights, self.config.optimizer.source_weight_normalization)
      source = (images, labels, weights * inputs['alpha'])
      if scores is not None and self.config.policy.alpha_credit == 'first_order':
        # alpha_s scales only the kept examples, each by its applied weight: the
        # first-order drop of the validation loss per unit of alpha_s.
        kept_scores = scores if indices is None else tf.gather(scores, indices)
        credit['credit_alpha'] = tf.reduce_sum(weights * kept_scores)
    losses = self._model_update(source, inputs.get('target'))
    self._sync_moving_statistics()
    return {**losses, 'kept_lambda_sum': kept_lambda_sum, **credit}

  def _sync_moving_statistics(self) -> None:
    """Sets every replica's BatchNorm moving statistics to their mean over replicas.

    Keras 3 creates them with aggregation 'none', so each replica's training
    passes moved only its own copy: the copies drifted apart, each replica
    computed the reward and the credit with a different model, and checkpoints
    kept replica 0's. The mean is what tf.keras 2's mean-aggregated moving
    statistics gave: exact for the moving mean (equal shards), the mean of the
    replicas' batch variances for the variance. One device skips it.
    """
    state = self.model.encoder.non_trainable_variables
    if self.strategy.num_replicas_in_sync == 1 or not state:
      return
    means = self._across_replicas(tf.distribute.ReduceOp.MEAN, [v.value for v in state])
    for variable, mean in zip(state, means):
      variable.assign(mean)

  def _across_replicas(self, op: tf.distribute.ReduceOp, values):
    """`values` reduced over the replicas, in replica context; as they are on one."""
    if self.strategy.num_replicas_in_sync == 1:
      return values
    return tf.distribute.get_replica_context().all_reduce(op, values)

  def _kept_source(self, batch, lambda_per_class):
    """The B_S/R source examples this replica trains on, decoded, with their lambda.

    Also returns their positions among the candidates (None: all were kept).
    Candidates arrive decoded (images, labels) or, with source_decode =
    'after_select', as (encoded, labels, seeds): lambda depends only on the
    label, so the top B_S are chosen before anything is decoded.
    """
    kept = self.config.source_batch_size // self.strategy.num_replicas_in_sync
    labels = batch[1]
    weights = tf.gather(lambda_per_class, labels)
    if labels.shape[0] == kept:  # no candidates beyond B_S: nothing to select
      return batch[0], labels, weights, None
    indices = self._selected_indices(weights, kept)
    if len(batch) == 2:
      images = tf.gather(batch[0], indices)
    else:
      encoded, _, seeds = batch
      images = input_pipeline.decode_and_augment(
          tf.gather(encoded, indices), tf.gather(seeds, indices), self.config.data)
    return images, tf.gather(labels, indices), tf.gather(weights, indices), indices

  def _selected_indices(self, weights: tf.Tensor, kept: int) -> tf.Tensor:
    """Positions of this replica's kept candidates.

    Per replica: its own top `kept`. Global: every replica holds the same
    global candidates, takes the global top B_S (as one device would) and
    keeps slice `replica_id` of it.
    """
    if self.config.selection != 'global' or self.strategy.num_replicas_in_sync == 1:
      return select_top_weighted(weights, kept)
    chosen = select_top_weighted(weights, self.config.source_batch_size)
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return chosen[replica * kept:(replica + 1) * kept]

  def _model_step(self, source, target) -> dict:
    """The model's forward, backward and SGD update on kept, decoded batches.

    `source` is (images, labels, alpha_s * normalised lambda) or None. Pure
    tensor compute, so it is what --jit_compile hands to XLA.
    """
    zero = tf.constant(0.0)
    scale = tf.constant(1.0)
    with tf.GradientTape() as tape:
      source_loss = zero
      if source is not None:
        images, labels, weights = source
        logits = self._source_logits(images, target_too=target is not None)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        source_loss = tf.nn.compute_average_loss(
            per_example * weights, global_batch_size=self._source_loss_divisor(target))
      target_loss = self._target_loss(target) if target is not None else zero
      if source is not None and target is not None and (
          self.config.optimizer.source_loss_scaling == 'target_ratio'):
        scale = self._target_ratio(per_example, target_loss)
        source_loss *= scale
      decay = self.config.optimizer.weight_decay * tf.add_n(
          [tf.nn.l2_loss(v) for v in self._decayed]) / self.strategy.num_replicas_in_sync
      total = source_loss + target_loss + decay
    variables = self.model.trainable_variables
    gradients = tape.gradient(total, variables)
    self.optimizer.apply_gradients(zip(gradients, variables))
    return {'loss/source': source_loss, 'loss/target': target_loss, 'loss/weight_decay': decay,
            # Summed over replicas like the losses, so each reports its share.
            'loss/source_scale': scale / self.strategy.num_replicas_in_sync}

  def _source_loss_divisor(self, target) -> int:
    """What the source term's sum is divided by: B_T in joint steps, else B_S.

    Eq. 1 sums both terms, alpha_s * sum_j lambda_j L_S + sum_k L_T. Dividing
    both sums by B_T keeps that ratio for any B_S / B_T (the paper's JFT runs
    use B_S = 4 B_T) and lets learning rates read as for fine-tuning's mean
    loss; with B_S = B_T it is the per-batch mean. A source-only step
    (pretraining, DATL's reweighted pretraining) has no target term to weigh
    against, so it averages over B_S.
    """
    return self.config.source_batch_size if target is None else self.config.target_batch_size

  def _target_ratio(self, source_per_example, target_loss) -> tf.Tensor:
    """min(1, mean L_T / mean L_S) over the step's global batches, a constant.

    --source_loss_scaling=target_ratio. With 100 target images the target
    loss nears zero within a few epochs, while a pretrained source head's
    loss does not: the paper's alpha_s * L_S then dominates the late updates
    whatever alpha_s the policy picks. Scaling by the loss ratio leaves Eq. 1
    as is while the target loss is at least the source's, and shrinks the
    source term as the target fits. lambda and alpha_s are sampled, kept and
    rewarded as before: the policy acts on what is left. Means are
    all-reduced, so every replica applies the single-device factor.
    """
    source_mean = tf.nn.compute_average_loss(tf.stop_gradient(source_per_example),
                                             global_batch_size=self.config.source_batch_size)
    means = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.stack([source_mean, tf.stop_gradient(target_loss)]))
    return tf.minimum(1.0, tf.math.divide_no_nan(means[1], means[0]))

  def _source_logits(self, images, target_too: bool):
    """h_S(g(x)) in training mode, leaving the moving statistics to the target.

    With --bn_statistics=target in a joint step, the encoder's non-trainable
    state (BatchNorm's moving mean and variance) is read before the source
    pass and written back after it: the pass still normalises with its own
    batch statistics, but only the target pass moves the averages that
    inference (reward, evaluation, serving) uses. Program order fixes the
    read -> update -> restore sequence (tf.function's automatic control
    dependencies order the ops on each variable).
    """
    if not (target_too and self.config.model.bn_statistics == 'target'):
      return self.model.source_logits(images, training=True)
    state = self.model.encoder.non_trainable_variables
    saved = [tf.identity(v.value) for v in state]
    logits = self.model.source_logits(images, training=True)
    for variable, value in zip(state, saved):
      variable.assign(value)
    return logits

  def candidate_scores(self, source_batch, reward_batch, target_batch) -> tf.Tensor:
    """First-order value of every source candidate for the validation loss.

    u_i = <grad_g L_S(x_i), grad_g L_val>: how much an SGD step on candidate i
    alone would lower the validation loss (encoder g, or its last
    --credit_last_variables variables; inference mode, before this step's
    update). L_val is 'ce': the h_T cross-entropy of the
    reward batch; or 'ncm': the cross-entropy of a nearest-class-mean head,
    logits = scale * cos(g(x_val), class means of g(this step's target batch)),
    which values the representation whatever h_T's current geometry. The
    validation gradient is the mean over replicas; u_i comes from one
    forward-mode pass over the candidates. Returns u, one score a candidate.
    """
    variables = self.model.encoder.trainable_variables
    if self.config.policy.credit_last_variables:
      variables = variables[-self.config.policy.credit_last_variables:]
    images, labels = source_batch
    val_images, val_labels = reward_batch
    with tf.GradientTape() as tape:
      if self.config.policy.credit_signal == 'ncm':
        logits = self._ncm_logits(val_images, target_batch)
      else:
        logits = self.model.target_logits(val_images, training=False)
      val_loss = tf.reduce_mean(self._target_per_example_loss(val_labels, logits))
    gradients = self._across_replicas(tf.distribute.ReduceOp.MEAN,
                                      tape.gradient(val_loss, variables))
    with tf.autodiff.ForwardAccumulator([v.value for v in variables], gradients) as acc:
      source_logits = self.model.source_logits(images, training=False)
      per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, source_logits)
    return acc.jvp(per_example)

  def _credit_sums(self, scores, labels) -> dict:
    """Per-class sums and counts of the scores and their moments, summed across
    replicas by the caller."""
    num_classes = self.config.data.source_num_classes
    return {'credit_sum': tf.math.unsorted_segment_sum(scores, labels, num_classes),
            'credit_count': tf.math.unsorted_segment_sum(tf.ones_like(scores), labels,
                                                         num_classes),
            'credit_moments': tf.stack([tf.reduce_sum(scores), tf.reduce_sum(scores * scores),
                                        tf.cast(tf.size(scores), tf.float32)])}

  def _ncm_logits(self, val_images, target_batch):
    """Nearest-class-mean logits: scaled cosine to the target batch's class means.

    The means are over the global target batch. With several replicas each
    holds B_T / R examples, so its own means would miss classes and differ by
    replica; per-class sums and counts are summed across replicas instead
    (all_reduce passes gradients back the same way, so the validation
    gradient still matches one device's).
    """
    target_images, target_labels = target_batch
    num_classes = self.config.data.target_num_classes
    # float32 whatever --precision: this loss's gradient scores every candidate.
    features = tf.math.l2_normalize(
        tf.cast(self.model.encoder(target_images, training=False), tf.float32), -1)
    sums, counts = self._across_replicas(tf.distribute.ReduceOp.SUM, [
        tf.math.unsorted_segment_sum(features, target_labels, num_classes),
        tf.math.unsorted_segment_sum(tf.ones_like(features[:, :1]), target_labels,
                                     num_classes)])
    means = tf.math.l2_normalize(tf.math.divide_no_nan(sums, counts), -1)
    val_features = tf.math.l2_normalize(
        tf.cast(self.model.encoder(val_images, training=False), tf.float32), -1)
    return self.config.policy.credit_ncm_scale * tf.matmul(val_features, means,
                                                           transpose_b=True)

  def _reward_forward(self, images):
    return self.model.target_logits(images, training=False)

  def _target_loss(self, batch):
    images, labels = batch
    logits = self.model.target_logits(images, training=True)
    return tf.nn.compute_average_loss(self._target_per_example_loss(labels, logits),
                                      global_batch_size=self.config.target_batch_size)

  def _target_per_example_loss(self, labels, logits):
    """L_T per example: softmax cross-entropy, or for a multi-label target the
    mean over classes of each class's sigmoid cross-entropy (CheXpert's loss)."""
    if not self.config.data.target_multi_label:
      return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels, logits.dtype), logits=logits), axis=-1)

  def replica_reward_outputs(self, batch):
    """Correct count, labels and probabilities of the target head, inference mode.

    Multi-label: per-class sigmoid probabilities, and no correct count (the
    reward is AUC; `config.validate` refuses accuracy).
    """
    images, labels = batch
    logits = self._reward_logits(images)
    if self.config.data.target_multi_label:
      return tf.constant(0.0), tf.identity(labels), tf.math.sigmoid(logits)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                             labels), tf.float32))
    return correct, tf.identity(labels), tf.nn.softmax(logits)


def learning_rate_schedule(config: Config):
  """Linear warm-up to the base rate, then cosine decay to 0 (Appendix A)."""
  optimizer = config.optimizer
  decay_steps = max(config.train_steps - optimizer.warmup_steps, 1)
  if optimizer.warmup_steps == 0:
    return keras.optimizers.schedules.CosineDecay(optimizer.learning_rate, decay_steps)
  return keras.optimizers.schedules.CosineDecay(
      0.0, decay_steps, warmup_target=optimizer.learning_rate,
      warmup_steps=optimizer.warmup_steps)
