"""Encoder registry, input scaling, heads, and weights loaded from local files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2tl_tf import models


def test_small_cnn_maps_images_to_features():
  encoder = models.build_encoder('small_cnn', 28, 1)
  assert encoder(tf.zeros([2, 28, 28, 1])).shape == (2, 128)


@pytest.mark.parametrize('backbone, size', [('resnet50', 32), ('densenet121', 32),
                                            ('inception_v3', 75)])
def test_keras_applications_build_without_downloading(backbone, size):
  encoder = models.build_encoder(backbone, size, 3)
  assert encoder(tf.zeros([1, size, size, 3])).shape[0] == 1


def test_keras_application_accepts_grayscale_without_weights():
  encoder = models.build_encoder('resnet50', 32, 1)
  assert encoder(tf.zeros([1, 32, 32, 1])).shape == (1, 2048)


def test_backbone_weights_load_from_a_local_file(tmp_path):
  source = models.build_encoder('resnet50', 32, 3)
  path = str(tmp_path / 'resnet50_notop.weights.h5')
  source.layers[-1].save_weights(path)
  loaded = models.build_encoder('resnet50', 32, 3, weights=path)
  images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
  np.testing.assert_allclose(loaded(images), source(images), rtol=1e-5, atol=1e-5)


def test_small_cnn_weights_load_from_a_local_file(tmp_path):
  source = models.build_encoder('small_cnn', 28, 1)
  path = str(tmp_path / 'small.weights.h5')
  source.save_weights(path)
  loaded = models.build_encoder('small_cnn', 28, 1, weights=path)
  images = tf.random.stateless_uniform([2, 28, 28, 1], seed=[1, 2])
  np.testing.assert_allclose(loaded(images), source(images), rtol=1e-6)


@pytest.mark.parametrize('name, size, weights, message', [
    ('vgg', 28, '', 'unknown'),
    ('inception_v3', 32, '', 'needs --image_size >= 75'),
    ('small_cnn', 28, '/no/such/file.h5', 'does not exist'),
])
def test_bad_encoder_settings_are_explained(name, size, weights, message):
  with pytest.raises(ValueError, match=message):
    models.build_encoder(name, size, 3, weights)


def test_input_scaling_matches_keras_preprocessing():
  images = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
  caffe = models.InputScaling(255.0, models._CAFFE_MEAN_BGR, (1.0, 1.0, 1.0),  # pylint: disable=protected-access
                              reverse_channels=True)
  np.testing.assert_allclose(caffe(images), keras.applications.resnet50.preprocess_input(
      images * 255.0), rtol=1e-5, atol=1e-4)
  torch = models.InputScaling(1.0, models._IMAGENET_MEAN, models._IMAGENET_STD)  # pylint: disable=protected-access
  np.testing.assert_allclose(torch(images), keras.applications.densenet.preprocess_input(
      images * 255.0), rtol=1e-5, atol=1e-4)


def test_transfer_model_heads_and_variables():
  model = models.TransferModel('small_cnn', 16, 1, source_num_classes=7, target_num_classes=3)
  images = tf.zeros([2, 16, 16, 1])
  assert model.source_logits(images, training=False).shape == (2, 7)
  assert model.target_logits(images, training=False).shape == (2, 3)
  assert sorted(model.checkpoint_items()) == ['encoder', 'source_head', 'target_head']
  decayed = models.weight_decay_variables(model.trainable_variables)
  assert decayed and all(len(v.shape) > 1 for v in decayed)
  target_only = models.TransferModel('small_cnn', 16, 1, 0, 3)
  assert target_only.source_head is None
