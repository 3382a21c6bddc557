"""files.write_text_atomically: a reader sees the old file or the new one, never a part."""

import os

import pytest
import tensorflow as tf

from l2tl_tf import files


def test_writes_and_replaces_without_leaving_a_partial_file(tmp_path):
  path = str(tmp_path / 'config.json')
  files.write_text_atomically(path, '{"a": 1}')
  files.write_text_atomically(path, '{"a": 2}')
  with open(path, encoding='utf-8') as f:
    assert f.read() == '{"a": 2}'
  assert os.listdir(tmp_path) == ['config.json']


def test_a_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = str(tmp_path / 'metrics.json')
  files.write_text_atomically(path, 'old')

  def crash(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(tf.io.gfile, 'rename', crash)
  with pytest.raises(OSError, match='disk full'):
    files.write_text_atomically(path, 'new')
  with open(path, encoding='utf-8') as f:
    assert f.read() == 'old'
