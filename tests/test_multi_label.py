"""Multi-label targets (CheXpert, the paper's Table 7): records, checks, loss, AUC, outputs.

A multi-label record stores the ids of its positive classes in
image/class/label (any number, none included). The target head is trained with
per-class sigmoid cross-entropy and scored by per-class and mean AUC.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import IMAGE_SIZE, TinyData, striped_images, tiny_config
from l2tl_tf import (evaluation, input_pipeline, lambda_prior, loop, models, preflight, records,
                     runs, serving)
from l2tl_tf.config import DataConfig, ModelConfig, OptimizerConfig, PolicyConfig, validate
from l2tl_tf.trainer import mean_auc

NUM_CLASSES = 4


def _images(label_sets, rng):
  """Noise images with one bright band per positive class."""
  images = (rng.random((len(label_sets), IMAGE_SIZE, IMAGE_SIZE)) * 60).astype(np.uint8)
  for i, positives in enumerate(label_sets):
    for cls in positives:
      row = (cls * 3) % (IMAGE_SIZE - 2)
      images[i, row:row + 2] = 255
  return images


def _label_sets(count, rng):
  """Random positive sets; the first NUM_CLASSES are single classes and one is empty,
  so every class has positives and negatives."""
  sets = [[c] for c in range(NUM_CLASSES)] + [[]]
  sets += [np.flatnonzero(rng.random(NUM_CLASSES) < 0.4).tolist()
           for _ in range(count - len(sets))]
  return sets


@pytest.fixture(scope='module')
def multi_label_data(tmp_path_factory):
  """The tiny single-label source plus multi-label target train / val / test records."""
  root = tmp_path_factory.mktemp('multi_label')
  rng = np.random.default_rng(0)
  source_labels = np.arange(160) % 8
  paths = {'source': records.write_image_records(
      str(root / 'source' / 'train'), striped_images(source_labels, rng), source_labels,
      num_shards=2)}
  label_sets = {}
  for split, count in (('train', 60), ('val', 40), ('test', 40)):
    label_sets[split] = _label_sets(count, rng)
    paths[split] = records.write_image_records(str(root / 'target' / split),
                                               _images(label_sets[split], rng),
                                               label_sets[split])
  return paths, label_sets


def _config(paths, model_dir, mode='l2tl', **overrides):
  config = tiny_config(TinyData(paths['source'], paths['train'], paths['test']), model_dir,
                       mode=mode, policy=PolicyConfig(learning_rate=0.01, reward_metric='auc'))
  data = dataclasses.replace(config.data, target_val=paths['val'], examples_per_class=0,
                             val_examples_per_class=0, target_multi_label=True)
  return dataclasses.replace(config, data=data, **overrides)


def _multi_hot(label_sets):
  hot = np.zeros([len(label_sets), NUM_CLASSES], np.float32)
  for i, positives in enumerate(label_sets):
    hot[i, positives] = 1.0
  return hot


# ------------------------------------------------------------------ records


def test_records_read_as_multi_hot_including_empty_lists_and_single_labels(
    multi_label_data, tiny_data):
  paths, label_sets = multi_label_data
  data = DataConfig(target_num_classes=NUM_CLASSES, target_multi_label=True)
  labels = input_pipeline.scan_target_labels(paths['train'], data)
  np.testing.assert_array_equal(labels, _multi_hot(label_sets['train']))
  assert not labels[NUM_CLASSES].any()  # the image with no positive class
  # A single-label file is a multi-label file with one positive each.
  single = input_pipeline.scan_target_labels(tiny_data.target, data)
  expected = input_pipeline.scan_labels(tiny_data.target, DataConfig(), 0)
  np.testing.assert_array_equal(single, np.eye(NUM_CLASSES)[expected])


def test_an_id_outside_the_classes_stops_the_stream(tmp_path):
  pattern = records.write_image_records(str(tmp_path / 'bad'), np.zeros([2, 8, 8], np.uint8),
                                        [[0], [1, 4]])
  data = DataConfig(target_num_classes=NUM_CLASSES, target_multi_label=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'outside \[0, 4\)'):
    input_pipeline.scan_target_labels(pattern, data)


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize('change, message', [
    (dict(policy=PolicyConfig(reward_metric='accuracy')), '--reward_metric=auc'),
    (dict(data_examples_per_class=5), 'cannot subset a multi-label'),
    (dict(data_target_val='', data_val_examples_per_class=5), 'pass the reward set as'),
    (dict(policy=PolicyConfig(reward_metric='auc', lambda_credit='first_order',
                              credit_signal='ncm')), 'use --credit_signal=ce'),
])
def test_settings_a_multi_label_target_cannot_take_are_refused(multi_label_data, tmp_path,
                                                                change, message):
  paths, _ = multi_label_data
  config = _config(paths, tmp_path)
  data_changes = {k[len('data_'):]: v for k, v in change.items() if k.startswith('data_')}
  other = {k: v for k, v in change.items() if not k.startswith('data_')}
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, **data_changes),
                               **other)
  with pytest.raises(ValueError, match=message):
    validate(config)


def test_fine_tuning_takes_any_reward_metric(multi_label_data, tmp_path):
  """Without a policy there is no reward: the accuracy default does not matter."""
  paths, _ = multi_label_data
  config = _config(paths, tmp_path, mode='finetune', warm_start_from='x',
                   policy=PolicyConfig())
  validate(config)


# ------------------------------------------------------------------ preflight


def test_preflight_names_multi_label_records_read_without_the_flag(multi_label_data, tmp_path):
  paths, _ = multi_label_data
  config = _config(paths, tmp_path / 'run')
  single = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                target_multi_label=False))
  check = [d for d in preflight.datasets(single) if d.flag == 'target_train'][0]
  with pytest.raises(ValueError, match='pass --target_multi_label'):
    preflight.scan_dataset(check, single.data)


def test_preflight_reads_every_positive_id_and_where_it_is(tmp_path, multi_label_data):
  paths, _ = multi_label_data
  bad = records.write_image_records(str(tmp_path / 'val'), np.zeros([3, 8, 8], np.uint8),
                                    [[0, 1], [], [2, 5]])
  config = _config(paths, tmp_path / 'run')
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, target_val=bad))
  check = [d for d in preflight.datasets(config) if d.flag == 'target_val'][0]
  scan = preflight.scan_dataset(check, config.data)
  np.testing.assert_array_equal(scan.labels, [0, 1, 2, 5])
  np.testing.assert_array_equal(scan.position, [0, 0, 2, 2])
  with pytest.raises(ValueError, match=r'record 2 of .*label 5.*outside \[0, 4\)'):
    preflight.check_labels(check, scan)


@pytest.mark.parametrize('split', ['target_val', 'target_train'])
def test_preflight_refuses_a_split_without_positives_of_a_class(tmp_path, multi_label_data,
                                                                split):
  paths, _ = multi_label_data
  pattern = records.write_image_records(str(tmp_path / 'split'), np.zeros([3, 8, 8], np.uint8),
                                        [[0, 1], [], [1, 2]])
  config = _config(paths, tmp_path / 'run')
  config = dataclasses.replace(config, data=dataclasses.replace(config.data, **{split: pattern}))
  with pytest.raises(ValueError, match=f'--{split}=.* has no positive of target class 3'):
    preflight.check(config, tf.distribute.get_strategy())
  assert not (tmp_path / 'run').exists()


def _unlabelled_record(path):
  """A record with an image but no label feature, as a converter using another key writes."""
  example = tf.train.Example(features=tf.train.Features(feature={
      records.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[records.encode_png(np.zeros([8, 8], np.uint8))]))}))
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(example.SerializeToString())
  return str(path)


def test_a_record_without_the_label_feature_is_not_read_as_all_negative(tmp_path):
  """An empty list is an image with no positive class; a missing feature is an error."""
  data = DataConfig(target_num_classes=NUM_CLASSES, target_multi_label=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match='has no image/class/label feature'):
    input_pipeline.scan_target_labels(_unlabelled_record(tmp_path / 'val-0'), data)
  check = preflight.DatasetCheck('target_val', str(tmp_path / 'val-*'), 'target', NUM_CLASSES,
                                 0, True, multi_label=True)
  with pytest.raises(ValueError, match=r'record 0 of .*val-0.* has no image/class/label feature'):
    preflight.scan_dataset(check, data)


def test_a_source_record_with_several_labels_is_not_sent_to_the_multi_label_flag(tmp_path):
  pattern = records.write_image_records(str(tmp_path / 'source'),
                                        np.zeros([1, 8, 8], np.uint8), [[0, 1]])
  check = preflight.DatasetCheck('source_train', pattern, 'source', 8, 0, False)
  with pytest.raises(ValueError, match='source records need exactly one') as raised:
    preflight.scan_dataset(check, DataConfig(num_channels=1))
  assert 'target_multi_label' not in str(raised.value)


# ------------------------------------------------------------------ loss and AUC


def test_target_loss_is_the_mean_of_per_class_sigmoid_cross_entropies(multi_label_data,
                                                                       tmp_path):
  paths, _ = multi_label_data
  run = runs.build(_config(paths, tmp_path), tf.distribute.get_strategy())
  labels = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], np.float32)
  logits = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 1.0, 0.0, 4.0]], np.float32)
  probabilities = 1 / (1 + np.exp(-logits))
  expected = -np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities),
                      axis=-1)
  loss = run.trainer._target_per_example_loss(  # pylint: disable=protected-access
      tf.constant(labels), tf.constant(logits))
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def _pairwise_auc(positives, scores):
  aucs = []
  for cls in range(scores.shape[1]):
    pos, neg = scores[positives[:, cls], cls], scores[~positives[:, cls], cls]
    if len(pos) and len(neg):
      aucs.append(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
  return aucs


def test_multi_label_auc_of_reward_and_evaluation_match_pairwise_counting():
  rng = np.random.default_rng(0)
  positives = rng.random((30, NUM_CLASSES)) < 0.4
  positives[:, 3] = False  # no positive: left out of the mean
  scores = (rng.integers(0, 4, (30, NUM_CLASSES)) / 3.0).astype(np.float32)
  expected = _pairwise_auc(positives, scores)
  assert len(expected) == 3
  hot = positives.astype(np.float32)
  assert float(mean_auc(tf.constant(hot), scores, NUM_CLASSES)) == pytest.approx(
      np.mean(expected), rel=1e-6)
  assert evaluation.one_vs_rest_auc(hot, scores) == pytest.approx(np.mean(expected), rel=1e-6)
  per_class = evaluation.class_aucs(positives, scores)
  np.testing.assert_allclose(per_class[:3], expected, rtol=1e-6)
  assert np.isnan(per_class[3])


def test_the_prior_averages_each_image_into_every_class_it_is_positive_for():
  features = np.arange(12, dtype=np.float32).reshape(3, 4)
  labels = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]], np.float32)
  dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(2)
  means, counts = lambda_prior.class_mean_features(tf.identity, dataset, 3)
  np.testing.assert_array_equal(counts, [2, 1, 1])
  np.testing.assert_allclose(means, [features[:2].mean(0), features[1], features[0]])


# ------------------------------------------------------------------ end to end


def _dense_encoder(image_size, num_channels, weights):
  """A BatchNorm-free encoder: per-replica BN statistics would differ by design."""
  del weights
  inputs = keras.Input((image_size, image_size, num_channels))
  x = keras.layers.Flatten()(inputs)
  return keras.Model(inputs, keras.layers.Dense(16, activation='relu')(x))


def _train(config, strategy):
  keras.utils.set_random_seed(0)
  return loop.run_training(config, strategy, log=lambda _: None)


def test_l2tl_on_two_replicas_equals_one_device(multi_label_data, tmp_path, monkeypatch,
                                                mirrored):
  """The sigmoid loss and the AUC reward over the gathered global batch, as one device.

  M_S = 1: per-replica selection differs from the global top by design.
  """
  monkeypatch.setitem(models.ENCODERS, 'dense_test', _dense_encoder)
  monkeypatch.setitem(models.MIN_IMAGE_SIZE, 'dense_test', 1)
  paths, _ = multi_label_data
  results = {}
  for name, strategy in (('one', tf.distribute.get_strategy()), ('two', mirrored)):
    config = _config(paths, tmp_path / name, source_batch_multiplier=1,
                     model=ModelConfig(backbone='dense_test'))
    result = _train(config, strategy)
    run = runs.restore_for_inference(config.model_dir)
    results[name] = (result.final_metrics, run)
  one, two = results['one'], results['two']
  for key in ('loss/target', 'loss/source', 'policy/reward'):
    assert two[0][key] == pytest.approx(one[0][key], rel=1e-4, abs=1e-6), key
  assert 0.0 < one[0]['policy/reward'] <= 1.0
  for a, b in zip(one[1].model.trainable_variables, two[1].model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.name)
  np.testing.assert_allclose(one[1].policy.lambda_logits.numpy(),
                             two[1].policy.lambda_logits.numpy(), atol=1e-6)


@pytest.fixture(scope='module')
def pretrained_source(multi_label_data, tmp_path_factory):
  paths, _ = multi_label_data
  pretrain = _config(paths, tmp_path_factory.mktemp('pretrain'), mode='pretrain',
                     train_steps=30, checkpoint_every=30, steps_per_loop=10)
  _train(pretrain, tf.distribute.get_strategy())
  return pretrain.model_dir


def test_first_order_credit_and_the_lambda_prior_take_a_multi_label_target(
    multi_label_data, pretrained_source, tmp_path):
  """The credit's validation loss is the sigmoid one; the prior averages multi-hot means."""
  paths, _ = multi_label_data
  policies = {
      'credit': PolicyConfig(reward_metric='auc', lambda_credit='first_order',
                             credit_signal='ce', credit_optimizer='sgd',
                             credit_learning_rate=0.5, lambda_prior='feature_similarity',
                             lambda_prior_examples=64),
      'prior_only': PolicyConfig(reward_metric='auc', learning_rate=0.0,
                                 lambda_prior='feature_similarity', lambda_prior_examples=64),
  }
  logits = {}
  for name, policy in policies.items():
    config = _config(paths, tmp_path / name, warm_start_from=pretrained_source, policy=policy)
    _train(config, tf.distribute.get_strategy())
    logits[name] = runs.restore_for_inference(config.model_dir).policy.lambda_logits.numpy()
    assert os.path.exists(os.path.join(config.model_dir, lambda_prior.PRIOR_FILE))
  assert np.isfinite(logits['credit']).all()
  # The prior sets distinct starts per class; the credit then moves them.
  assert np.ptp(logits['prior_only'][:, -1]) > 0.1
  assert np.abs(logits['credit'] - logits['prior_only']).max() > 1e-3


def test_training_learns_and_evaluation_and_serving_report_per_class_outputs(
    multi_label_data, pretrained_source, tmp_path):
  """Fine-tuning from a source-pretrained encoder, then metrics.json and the SavedModel."""
  paths, label_sets = multi_label_data
  config = _config(paths, tmp_path / 'run', mode='finetune', train_steps=60,
                   checkpoint_every=60, steps_per_loop=20, eval_every=20,
                   warm_start_from=pretrained_source, batch_size=8,
                   optimizer=OptimizerConfig(learning_rate=0.1, warmup_steps=5))
  result = _train(config, tf.distribute.get_strategy())
  curve = [h['eval/val_mean_auc'] for h in result.history]
  assert len(curve) == 3 and 'eval/val_top1' not in result.history[-1]

  metrics = evaluation.evaluate(config.model_dir)
  assert metrics == json.loads(open(os.path.join(config.model_dir, 'metrics.json')).read())
  assert metrics['top1'] is None and metrics['num_examples'] == 40
  assert len(metrics['per_class_auc']) == NUM_CLASSES
  assert metrics['mean_auc'] == pytest.approx(np.mean(metrics['per_class_auc']))
  # Each class is a bright band: 60 steps learn it well past chance.
  assert metrics['mean_auc'] > 0.9, metrics

  export_dir = serving.export_saved_model(config.model_dir, str(tmp_path / 'export'))
  served = tf.saved_model.load(export_dir).signatures['serving_default']
  rng = np.random.default_rng(1)
  images = _images(label_sets['test'][:5], rng)
  outputs = served(images=tf.constant([records.encode_png(image) for image in images]))
  run = runs.restore_for_inference(config.model_dir)
  expected = evaluation.make_predictor(run)(
      input_pipeline.preprocess_eval(tf.constant(images[..., None]), config.data)).numpy()
  np.testing.assert_allclose(outputs['probabilities'].numpy(), expected, rtol=1e-4, atol=1e-5)
  assert outputs['classes'].shape == (5, NUM_CLASSES)
  np.testing.assert_array_equal(outputs['classes'].numpy(), (expected >= 0.5).astype(np.int32))


def test_evaluating_a_test_file_with_ids_outside_the_classes_says_so(multi_label_data,
                                                                     pretrained_source, tmp_path):
  paths, _ = multi_label_data
  config = _config(paths, tmp_path / 'run', mode='finetune', warm_start_from=pretrained_source,
                   train_steps=2, checkpoint_every=2, steps_per_loop=2)
  _train(config, tf.distribute.get_strategy())
  bad = records.write_image_records(str(tmp_path / 'test'), np.zeros([2, 16, 16], np.uint8),
                                    [[0], [2, 7]])
  with pytest.raises(ValueError, match=r'The test split cannot be scored: .*outside \[0, 4\)'):
    evaluation.evaluate(config.model_dir, target_test=bad)
