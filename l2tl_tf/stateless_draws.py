"""TensorFlow's stateless random draws for a whole batch of seeds at once.

`tf.random.stateless_uniform` and `tf.random.experimental.stateless_split`
take one seed each, so giving every example its own seed (which keeps each
image's augmentation independent of the batch it lands in) costs a
`tf.map_fn` of several ops per example: on a small host that loop, paid in
the target stream and again in the step, was the largest piece of L2TL's
input overhead. The draws are a pure function of the seed: Philox-4x32-10
(Salmon et al., 2011) keyed by TF's seed scrambling, the algorithm TF's
"auto_select" picks on the host CPU, where input pipelines run. Written here
with elementwise ops over the batch, they are bit-identical to TF's kernels
(tests compare them on hundreds of seeds, the int64 extremes among them) for
a fixed number of ops per batch, whatever its size.

`random_dataset_values` does the same for `tf.data.Dataset.random`, whose
per-element stream cost the input pipelines more CPU per step than any other
piece of their seed handling.

32-bit words travel as uint64 holding values below 2^32, so a 32x32-bit
product is exact and its high and low halves are a shift and a mask.
"""

import tensorflow as tf

_MASK = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)  # Philox-4x32's round multipliers
_KEY_BUMPS = (0x9E3779B9, 0xBB67AE85)    # its Weyl key increments
# TF's fixed key for scrambling a user seed into a key and counter
# (GenerateKey in tensorflow/core/kernels/stateless_random_ops.cc).
_SEED_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)
_ROUNDS = 10


def _u64(value: int) -> tf.Tensor:
  return tf.constant(value, tf.uint64)


def _philox(counter: tuple, key: tuple) -> tuple:
  """One Philox-4x32-10 block: four output words from a 4-word counter and 2-word key."""
  c0, c1, c2, c3 = counter
  k0, k1 = key
  mask, shift = _u64(_MASK), _u64(32)
  for round_index in range(_ROUNDS):
    product0, product1 = c0 * _u64(_MULTIPLIERS[0]), c2 * _u64(_MULTIPLIERS[1])
    hi0, lo0 = tf.bitwise.right_shift(product0, shift), tf.bitwise.bitwise_and(product0, mask)
    hi1, lo1 = tf.bitwise.right_shift(product1, shift), tf.bitwise.bitwise_and(product1, mask)
    c0, c1, c2, c3 = (tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi1, c1), k0), lo1,
                      tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi0, c3), k1), lo0)
    if round_index < _ROUNDS - 1:
      k0 = tf.bitwise.bitwise_and(k0 + _u64(_KEY_BUMPS[0]), mask)
      k1 = tf.bitwise.bitwise_and(k1 + _u64(_KEY_BUMPS[1]), mask)
  return c0, c1, c2, c3


def _words(values: tf.Tensor) -> tuple:
  """int64 -> its (low, high) 32-bit words as uint64."""
  bits = tf.bitcast(values, tf.uint64)
  return tf.bitwise.bitwise_and(bits, _u64(_MASK)), tf.bitwise.right_shift(bits, _u64(32))


def _int64(low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
  return tf.bitcast(tf.bitwise.bitwise_or(low, tf.bitwise.left_shift(high, _u64(32))), tf.int64)


def _key_and_counter(seeds: tf.Tensor) -> tuple:
  """TF's scrambling of each int64 [2] seed into a Philox key and start counter."""
  seed0_low, seed0_high = _words(seeds[:, 0])
  seed1_low, seed1_high = _words(seeds[:, 1])
  fixed = tuple(tf.fill(tf.shape(seed0_low), _u64(word)) for word in _SEED_SCRAMBLE_KEY)
  mix = _philox((seed0_low, seed0_high, seed1_low, seed1_high), fixed)
  zero = tf.zeros_like(mix[0])
  return (mix[0], mix[1]), (zero, zero, mix[2], mix[3])


def first_blocks(*seed_sets: tf.Tensor) -> list:
  """The first Philox block that a stateless op seeded by each seed draws from.

  Several seed sets go through one Philox pass (fewer, larger ops).

  Args:
    *seed_sets: int64 [N_i, 2] tensors, one stateless seed per row.

  Returns:
    One 4-tuple of uint64 [N_i] words per seed set.
  """
  key, counter = _key_and_counter(tf.concat(seed_sets, axis=0))
  sizes = [tf.shape(seeds)[0] for seeds in seed_sets]
  words = [tf.split(word, sizes) for word in _philox(counter, key)]
  return [tuple(word[index] for word in words) for index in range(len(seed_sets))]


def split_in_two(seeds: tf.Tensor) -> tuple:
  """`tf.random.experimental.stateless_split(seed, 2)` for every row of `seeds`.

  The split is a full-range int64 draw of shape [2, 2]: two consecutive
  Philox blocks (the counter's low word 0, then 1), each word pair one int64.

  Args:
    seeds: int64 [N, 2].

  Returns:
    (first, second): int64 [N, 2] each, the split's two new seeds per row.
  """
  key, counter = _key_and_counter(seeds)
  low_word = tf.concat([counter[0], counter[0] + _u64(1)], axis=0)  # starts at 0: no carry
  block = _philox((low_word,) + tuple(tf.tile(word, [2]) for word in counter[1:]),
                  tuple(tf.tile(word, [2]) for word in key))
  pairs = tf.stack([_int64(block[0], block[1]), _int64(block[2], block[3])], axis=1)
  return tuple(tf.split(pairs, 2))


def int32_values(block: tuple, count: int) -> tf.Tensor:
  """`tf.random.stateless_uniform([count], dtype=tf.int32, maxval=tf.int32.max)` from a block.

  Args:
    block: a seed's first block, from `first_blocks`.
    count: values per seed, at most 4.

  Returns:
    int32 [N, count] in [0, 2^31 - 1).

  Raises:
    ValueError: for count outside [1, 4]: a block holds four words (more
      would silently come back as four).
  """
  if not 1 <= count <= len(block):
    raise ValueError(f'count={count}: a block gives 1 to {len(block)} values per seed.')
  return tf.cast(tf.stack(block[:count], axis=1) % _u64(2**31 - 1), tf.int32)


def below_half(block: tuple) -> tf.Tensor:
  """`tf.random.stateless_uniform([]) < 0.5` from a block: bool [N].

  TF makes a float in [0, 1) from a word's low 23 bits as a mantissa, so the
  float is below 0.5 exactly when bit 22 of the first word is clear.
  """
  return tf.bitwise.bitwise_and(block[0], _u64(1 << 22)) == _u64(0)


def random_dataset_values(seed_pair: tuple, start: tf.Tensor, count: int) -> tf.Tensor:
  """Elements start .. start + count - 1 of `tf.data.Dataset.random(seed)`.

  Dataset.random takes (seed, seed2) = `tf.compat.v1.get_seed(seed)` when it
  is built (so it follows a global seed, if one is set) and yields the 32-bit
  words of Philox-4x32-10 keyed by `seed`, with the counter (block index,
  seed2), four per block in order, each as an int64.

  Args:
    seed_pair: `tf.compat.v1.get_seed(seed)`, taken where the Dataset.random
      it stands for would have been built.
    start: int64 scalar, the first element's position in the stream.
    count: how many elements.

  Returns:
    int64 [count], each in [0, 2^32).
  """
  seed, seed2 = (int(value) for value in seed_pair)
  start = tf.cast(start, tf.int64)
  offset = start % 4
  blocks = count // 4 + 2  # enough whatever the offset
  index_low, index_high = _words(start // 4 + tf.range(blocks, dtype=tf.int64))

  def fill(word):
    return tf.fill([blocks], _u64(word))
  counter = (index_low, index_high, fill(seed2 & _MASK), fill((seed2 >> 32) & _MASK))
  words = tf.reshape(tf.stack(_philox(counter, (fill(seed & _MASK), fill((seed >> 32) & _MASK))),
                              axis=1), [-1])
  return tf.cast(words[offset:offset + count], tf.int64)
