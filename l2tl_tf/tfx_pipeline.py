"""An example TFX pipeline: ImportExampleGen -> Trainer (l2tl) -> Pusher.

  python -m l2tl_tf.tfx_pipeline --data_root=DIR --pipeline_root=DIR \\
      --serving_model_dir=DIR --metadata_path=FILE \\
      --custom_config='{"mode": "l2tl", "source_train": "...", ...}'

ImportExampleGen reads the ImageNet-style tf.Example TFRecords (`records.py`)
of --data_root that match --input_pattern (default `train-*`: the target's
training shards, not the `class_names.txt` or test shards that `data/convert.py`
writes beside them) and splits them train:eval = 2:1; the Trainer runs
`tfx_module/trainer_module.py`, whose `run_fn` trains on the train split with
the eval split as the reward (validation) set; Pusher copies the SavedModel to
--serving_model_dir/<version>/. LocalDagRunner runs it with a SQLite metadata
store. Needs TFX (`.ci/install_tfx.sh` installs it in a venv of its own).
"""

import json
from typing import Any, Mapping, Optional, Sequence

from absl import app, flags
from tfx import v1 as tfx

from l2tl_tf import tfx_support

flags.DEFINE_string('pipeline_name', 'l2tl', 'TFX pipeline name.')
flags.DEFINE_string('data_root', '', 'Directory of tf.Example TFRecords for ImportExampleGen.')
flags.DEFINE_string('input_pattern', 'train-*',
                    'Files of --data_root that ImportExampleGen reads (the target training '
                    'shards); TFX reads every file by default, class_names.txt included.')
flags.DEFINE_string('pipeline_root', '', 'Where TFX writes artifacts.')
flags.DEFINE_string('serving_model_dir', '', 'Pusher destination.')
flags.DEFINE_string('metadata_path', '', 'SQLite ML Metadata file.')
flags.DEFINE_string('custom_config', '{}', 'JSON dict of l2tl-train flag values for run_fn.')
flags.DEFINE_list('beam_pipeline_args', [], 'Extra Beam options, comma-separated, e.g. '
                  '--direct_running_mode=multi_processing,--direct_num_workers=2.')
FLAGS = flags.FLAGS

# Beam's DirectRunner first tries its Prism runner, which downloads a binary
# from the internet; FnApiRunner is the local runner it would fall back to.
# Add --direct_running_mode=multi_processing --direct_num_workers=N for
# worker processes.
DEFAULT_BEAM_PIPELINE_ARGS = ('--runner=FnApiRunner',)


def create_pipeline(pipeline_name: str, pipeline_root: str, data_root: str,
                    serving_model_dir: str, metadata_path: str,
                    custom_config: Mapping[str, Any],
                    module_file: str = tfx_support.TRAINER_MODULE_FILE,
                    beam_pipeline_args: Optional[Sequence[str]] = None,
                    input_pattern: str = 'train-*') -> tfx.dsl.Pipeline:
  """The three-component pipeline.

  Args:
    pipeline_name: name recorded in ML Metadata.
    pipeline_root: directory for the components' artifacts.
    data_root: directory of tf.Example TFRecords (`image/encoded`,
      `image/class/label`), the target data.
    serving_model_dir: base directory the Pusher copies the model into.
    metadata_path: SQLite file for ML Metadata.
    custom_config: l2tl-train flag values for the Trainer (see
      `tfx_support.config_from_trainer_args`), e.g. mode, source_train,
      train_steps, image_size, class counts.
    module_file: the Trainer module file.
    beam_pipeline_args: Beam options for ExampleGen, after
      DEFAULT_BEAM_PIPELINE_ARGS.
    input_pattern: the files of data_root to read, relative to it.

  Returns:
    A tfx.dsl.Pipeline for `tfx.orchestration.LocalDagRunner().run`.
  """
  example_gen = tfx.components.ImportExampleGen(
      input_base=data_root, input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name='single_split', pattern=input_pattern)]))
  trainer = tfx.components.Trainer(
      module_file=module_file, examples=example_gen.outputs['examples'],
      custom_config=dict(custom_config))
  pusher = tfx.components.Pusher(
      model=trainer.outputs['model'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name, pipeline_root=pipeline_root,
      components=[example_gen, trainer, pusher],
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          metadata_path),
      beam_pipeline_args=[*DEFAULT_BEAM_PIPELINE_ARGS, *(beam_pipeline_args or [])])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  for name in ('data_root', 'pipeline_root', 'serving_model_dir', 'metadata_path'):
    if not FLAGS[name].value:
      raise app.UsageError(f'--{name} is required.')
  tfx.orchestration.LocalDagRunner().run(create_pipeline(
      FLAGS.pipeline_name, FLAGS.pipeline_root, FLAGS.data_root, FLAGS.serving_model_dir,
      FLAGS.metadata_path, json.loads(FLAGS.custom_config),
      beam_pipeline_args=FLAGS.beam_pipeline_args, input_pattern=FLAGS.input_pattern))


if __name__ == '__main__':
  app.run(main)
