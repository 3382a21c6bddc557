"""SavedModel export with TF Serving / TFX signatures.

`serving_default` takes a batch of encoded image bytes (JPEG or PNG) and
returns class probabilities of the target head; `serving_examples` takes
serialized tf.Example protos with ImageNet-style features (the TFX and TF
Serving convention). Both apply the run's own evaluation preprocessing, so a
served model sees exactly what evaluation saw. Outputs: `probabilities`
[batch, target classes] and `classes`, the index of the most probable class,
0-based like the training labels after --target_label_offset is subtracted
(add the offset back for labels stored 1-based). A multi-label target
(--target_multi_label) gets each class's sigmoid probability instead, and
`classes` is then [batch, target classes] int32, 1 where the probability is at
least 0.5. Keras 3 `model.save(dir)` cannot write this, hence
`tf.saved_model.save` on a tf.Module.
"""

import tensorflow as tf

from l2tl_tf import input_pipeline, records, runs
from l2tl_tf.config import DataConfig
from l2tl_tf.models import TransferModel


class ServingModule(tf.Module):
  """g and h_T behind string-input serving functions."""

  def __init__(self, model: TransferModel, data: DataConfig):
    super().__init__(name='l2tl_serving')
    self.encoder, self.target_head = model.encoder, model.target_head
    self._data = data

  def _probabilities(self, encoded: tf.Tensor) -> dict:
    """Outputs for a batch of encoded images; an empty request gets empty outputs
    (the encoder's convolutions reject a batch of zero)."""
    return tf.cond(tf.size(encoded) > 0, lambda: self._predict(encoded), self._no_outputs)

  def _predict(self, encoded: tf.Tensor) -> dict:
    images = tf.map_fn(
        lambda image: input_pipeline.preprocess_eval(
            input_pipeline.decode_image(image, self._data.num_channels), self._data),
        encoded, fn_output_signature=tf.float32)
    logits = self.target_head(self.encoder(images, training=False))
    if self._data.target_multi_label:
      probabilities = tf.math.sigmoid(logits)
      return {'probabilities': probabilities,
              'classes': tf.cast(probabilities >= 0.5, tf.int32)}
    probabilities = tf.nn.softmax(logits)
    return {'probabilities': probabilities,
            'classes': tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

  def _no_outputs(self) -> dict:
    classes = [0, self.target_head.units] if self._data.target_multi_label else [0]
    return {'probabilities': tf.zeros([0, self.target_head.units]),
            'classes': tf.zeros(classes, tf.int32)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='images')])
  def serve_images(self, images):
    return self._probabilities(images)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
  def serve_examples(self, examples):
    parsed = tf.io.parse_example(
        examples, {records.IMAGE_KEY: records.FEATURE_SPEC[records.IMAGE_KEY]})
    return self._probabilities(parsed[records.IMAGE_KEY])


def export_saved_model(model_dir: str, export_dir: str) -> str:
  """Exports the latest checkpoint of a run with a target head to `export_dir`."""
  run = runs.restore_for_inference(model_dir)
  if run.model.target_head is None:
    raise ValueError(f'{model_dir} is a {run.config.mode.value} run: it has no target head '
                     'to serve.')
  module = ServingModule(run.model, run.config.data)
  tf.saved_model.save(module, export_dir, signatures={
      'serving_default': module.serve_images,
      'serving_examples': module.serve_examples,
  })
  return export_dir
