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


def test_two_writers_of_one_file_leave_one_whole_file(tmp_path, monkeypatch):
  """A fixed temporary name let a second writer truncate the first one's file."""
  path = str(tmp_path / 'metrics.json')
  rename = tf.io.gfile.rename
  calls = []

  def second_writer_first(source, target, overwrite=False):
    calls.append(source)
    if len(calls) == 1:  # the second writer runs whole between the first's write and rename
      files.write_text_atomically(path, '{"split": "val"}')
    rename(source, target, overwrite=overwrite)
  monkeypatch.setattr(tf.io.gfile, 'rename', second_writer_first)
  files.write_text_atomically(path, '{"split": "test", "num_examples": 40}')
  with open(path, encoding='utf-8') as f:
    assert f.read() == '{"split": "test", "num_examples": 40}'
  assert os.listdir(tmp_path) == ['metrics.json']
