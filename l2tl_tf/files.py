"""Writing run outputs so that a crash never leaves a half-written file."""

import uuid

import tensorflow as tf


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file renamed over it.

  A reader sees the old file or the new one, never part of one. Without it a
  crash while `config.json` is rewritten on resume leaves a truncated file
  that resume, evaluation and export all fail to parse, and a truncated
  `scenario.json` or results file would look finished. Works on local paths
  and on the object stores tf.io.gfile reaches. Each write has a temporary
  name of its own, so two writers of one file (say `evaluate --split=val`
  and `--split=test` at once) leave one whole file, not a mix of both.
  """
  partial = f'{path}.{uuid.uuid4().hex}.partial'
  try:
    with tf.io.gfile.GFile(partial, 'w') as f:
      f.write(text)
    tf.io.gfile.rename(partial, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(partial):
      tf.io.gfile.remove(partial)
    raise
