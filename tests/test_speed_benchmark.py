"""benchmarks/speed.py: its decode counts and table, on the tiny data.

The timings themselves are the benchmark's to report, not a test's to assert;
what is tested is that the counts it reports measure what they claim.
"""

import dataclasses

import pytest

from conftest import load_benchmark, tiny_config

speed = load_benchmark('speed.py')


@pytest.mark.parametrize('decode, per_trained', [('after_select', 1.0), ('pipeline', 5.0)])
def test_decode_counts_follow_where_candidates_are_decoded(tiny_data, tmp_path, decode,
                                                           per_trained):
  config = tiny_config(tiny_data, tmp_path, source_decode=decode)
  assert config.source_batch_multiplier == 5
  counts = speed.count_decodes(config, steps=4)
  assert counts['source_decoded_per_trained'] == pytest.approx(per_trained)
  # The reward set is decoded on the first pass only, then served from memory.
  assert counts['validation_decodes_over_three_passes'] == counts['validation_images'] == 20


def test_decode_counter_restores_the_decoder():
  from l2tl_tf import input_pipeline  # pylint: disable=g-import-not-at-top
  original = input_pipeline.decode_image
  with speed.DecodeCounter():
    assert input_pipeline.decode_image is not original
  assert input_pipeline.decode_image is original


def test_table_reports_the_issue_ratios():
  ms = dict(finetune=10.0, l2tl=33.0, l2tl_decode_all=40.0, l2tl_inputs_in_memory=32.5,
            part_train=20.0, part_reward=12.0, pipeline=11.0)
  result = {'setup': dataclasses.asdict(speed.SETUPS['small_cnn']), 'ms': ms,
            'l2tl_over_parts': 33.0 / 32.0, 'l2tl_inputs_in_memory_over_parts': 32.5 / 32.0,
            'l2tl_over_finetune': 3.3,
            'pipeline_over_l2tl_consumption': 3.0,
            'decodes': {'source_decoded_per_trained': 1.0, 'validation_images': 20,
                        'validation_decodes_over_three_passes': 20},
            'decodes_decode_all': {'source_decoded_per_trained': 5.0}}
  table = speed.format_table({'small_cnn': result})
  assert ('| small_cnn (B=64, 28 px) | 10.0 | 33.0 | 40.0 | 32.5 | 20.0 | 12.0 | 1.031 (1.016) '
          '| 3.30 ') in table
  assert '| 1.00 (5.00) | 20 of 20 | 3.0x |' in table


def test_step_over_parts_is_paired_with_the_parts_timed_around_it():
  # Three rounds, the parts timed three times in each (speed.ROUND_ORDER):
  # before the L2TL step, between it and the in-memory step, and after that.
  # Round 2 ran under load (every timing doubled); in round 3 the load rose
  # during the round, and the parts around each step follow it.
  assert speed.ROUND_ORDER.index('parts') < speed.ROUND_ORDER.index('l2tl')
  samples = {'l2tl': [105.0, 210.0, 110.0], 'l2tl_inputs_in_memory': [102.0, 204.0, 123.0],
             'part_train': [60.0, 60.0, 60.0, 120.0, 120.0, 120.0, 60.0, 66.0, 72.0],
             'part_reward': [40.0, 40.0, 40.0, 80.0, 80.0, 80.0, 40.0, 44.0, 48.0]}
  assert speed.per_round_ratios(samples, 'l2tl') == pytest.approx([1.05, 1.05, 110 / 105])
  assert speed.per_round_ratios(samples, 'l2tl_inputs_in_memory') == pytest.approx(
      [1.02, 1.02, 123 / 115])
  assert speed.paired_ratio(samples, 'l2tl') == pytest.approx(1.05)


def _while_parallel_iterations(loop_fn) -> list:
  graph = loop_fn.get_concrete_function().graph
  return [op.get_attr('parallel_iterations') for op in graph.get_operations()
          if op.type in ('While', 'StatelessWhile')]


@pytest.mark.parametrize('parallel', [1, 10])
def test_pass_loop_runs_every_pass_with_the_overlap_asked_for(parallel):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  calls = tf.Variable(0.0)

  def one_pass():
    return calls.assign_add(1.0)
  loop_fn = speed.pass_loop(one_pass, 7, parallel=parallel)
  assert _while_parallel_iterations(loop_fn) == [parallel]
  # 1 + 2 + ... + 7: each pass ran once, in order.
  assert float(loop_fn()) == 28.0
  assert float(calls.numpy()) == 7.0
