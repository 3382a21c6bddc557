"""The shared encoder g and the heads h_S (source) and h_T (target).

Encoders take float images in [0, 1] and apply their own input scaling, so the
input pipeline is the same for every backbone and weights loaded from a file
see the inputs they were trained with. Nothing here downloads: keras.applications
backbones are built with `weights=None` or a local weights file.
"""

import contextlib
from typing import Callable, Optional

import keras
import tensorflow as tf

# Smallest input each keras.applications backbone accepts (include_top=False).
MIN_IMAGE_SIZE = {'inception_v3': 75, 'resnet50': 32, 'densenet121': 32, 'small_cnn': 8}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class InputScaling(keras.layers.Layer):
  """Maps [0, 1] images to a backbone's expected input: (x * scale - mean) / std.

  `reverse_channels` turns RGB into the BGR order of Caffe-trained weights.
  """

  def __init__(self, scale: float, mean, std, reverse_channels: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.scale, self.mean, self.std = scale, tuple(mean), tuple(std)
    self.reverse_channels = reverse_channels

  def call(self, inputs):
    x = inputs * self.scale
    if self.reverse_channels:
      x = x[..., ::-1]
    channels = inputs.shape[-1]
    mean = tf.constant(self.mean[:channels] if channels == len(self.mean) else self.mean[:1],
                       dtype=x.dtype)
    std = tf.constant(self.std[:channels] if channels == len(self.std) else self.std[:1],
                      dtype=x.dtype)
    return (x - mean) / std

  def get_config(self):
    return {**super().get_config(), 'scale': self.scale, 'mean': self.mean, 'std': self.std,
            'reverse_channels': self.reverse_channels}


def _small_cnn(image_size: int, num_channels: int, weights: str) -> keras.Model:
  """A VGG-style CNN for 28-64 px images: fast enough to train on a CPU."""
  inputs = keras.Input((image_size, image_size, num_channels))
  x = InputScaling(2.0, (1.0,), (1.0,))(inputs)
  for stage, filters in enumerate((32, 64, 128)):
    for conv in range(2):
      x = keras.layers.Conv2D(filters, 3, padding='same', use_bias=False,
                              name=f'conv{stage}_{conv}')(x)
      x = keras.layers.BatchNormalization(name=f'bn{stage}_{conv}')(x)
      x = keras.layers.ReLU()(x)
    if stage < 2:
      x = keras.layers.MaxPooling2D(2)(x)
  features = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, features, name='small_cnn')
  if weights:
    model.load_weights(weights)
  return model


def _application(factory: Callable, scaling: InputScaling):
  def build(image_size: int, num_channels: int, weights: str) -> keras.Model:
    inputs = keras.Input((image_size, image_size, num_channels))
    backbone = factory(include_top=False, weights=weights or None, pooling='avg',
                       input_shape=(image_size, image_size, num_channels))
    scaled = InputScaling.from_config(scaling.get_config())(inputs)
    return keras.Model(inputs, backbone(scaled), name=backbone.name)
  return build


ENCODERS = {
    'small_cnn': _small_cnn,
    'inception_v3': _application(keras.applications.InceptionV3,
                                 InputScaling(2.0, (1.0,), (1.0,))),
    'resnet50': _application(keras.applications.ResNet50,
                             InputScaling(255.0, _CAFFE_MEAN_BGR, (1.0, 1.0, 1.0),
                                          reverse_channels=True)),
    'densenet121': _application(keras.applications.DenseNet121,
                                InputScaling(1.0, _IMAGENET_MEAN, _IMAGENET_STD)),
}


def build_encoder(name: str, image_size: int, num_channels: int,
                  weights: str = '') -> keras.Model:
  """Builds encoder g from the registry.

  Raises:
    ValueError: for an unknown backbone, an image size it cannot take, or a
      weights file that does not exist.
  """
  if name not in ENCODERS:
    raise ValueError(f'--backbone={name!r} is unknown; choose one of {sorted(ENCODERS)}.')
  if image_size < MIN_IMAGE_SIZE[name]:
    raise ValueError(f'--backbone={name} needs --image_size >= {MIN_IMAGE_SIZE[name]}, '
                     f'got {image_size}.')
  if weights and not tf.io.gfile.exists(weights):
    raise ValueError(f'--backbone_weights={weights!r} does not exist (nothing is downloaded: '
                     'give a local weights file).')
  return ENCODERS[name](image_size, num_channels, weights)


class TransferModel:
  """g with h_S and h_T; either head is absent when its class count is 0.

  `precision` is the encoder's Keras dtype policy ('float32' or
  'mixed_bfloat16'); the heads always compute in float32, so logits, losses
  and the reward are float32 whatever the encoder computes in.
  """

  def __init__(self, backbone: str, image_size: int, num_channels: int,
               source_num_classes: int, target_num_classes: int,
               backbone_weights: str = '', precision: str = 'float32'):
    self.image_size, self.num_channels = image_size, num_channels
    with dtype_policy(precision):
      self.encoder = build_encoder(backbone, image_size, num_channels, backbone_weights)
    self.source_head = _head(source_num_classes, 'source_head')
    self.target_head = _head(target_num_classes, 'target_head')
    self._build()

  def _build(self):
    features = self.encoder(tf.zeros([1, self.image_size, self.image_size, self.num_channels]))
    for head in (self.source_head, self.target_head):
      if head is not None:
        head(features)

  @property
  def trainable_variables(self) -> list[tf.Variable]:
    variables = list(self.encoder.trainable_variables)
    for head in (self.source_head, self.target_head):
      if head is not None:
        variables += head.trainable_variables
    return variables

  def source_logits(self, images, training: bool):
    return self.source_head(self.encoder(images, training=training))

  def target_logits(self, images, training: bool):
    return self.target_head(self.encoder(images, training=training))

  def checkpoint_items(self) -> dict:
    """Objects to put in a tf.train.Checkpoint, keyed by stable names."""
    items = {'encoder': self.encoder}
    if self.source_head is not None:
      items['source_head'] = self.source_head
    if self.target_head is not None:
      items['target_head'] = self.target_head
    return items


def _head(num_classes: int, name: str) -> Optional[keras.layers.Dense]:
  if num_classes <= 0:
    return None
  return keras.layers.Dense(num_classes, name=name, dtype='float32')


@contextlib.contextmanager
def dtype_policy(name: str):
  """Builds layers under Keras dtype policy `name`, restoring the previous one.

  Layers keep the policy they were built with, so setting it only around
  construction leaves the process-wide default untouched.
  """
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def weight_decay_variables(variables: list[tf.Variable]) -> list[tf.Variable]:
  """Kernels only: biases and BatchNorm parameters are not decayed."""
  return [v for v in variables if len(v.shape) > 1]
