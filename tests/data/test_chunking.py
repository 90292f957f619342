"""The crop and 16-chunk rules of sota's `training/data_loader` and `training/eval.py`, and
ddhf's DCASE loader (`training/data_loader/dcase_loader.py`)."""
from __future__ import annotations

import numpy as np
import pytest

from hcnn_jax.data import chunking


def test_chunk_starts_mtat_clip_hcnn_hop():
  # 29.1 s MTAT clip, HCNN input of 5 s: the reference's hop of 24,100 samples.
  starts = chunking.chunk_starts(465_600, 80_000, 16)
  np.testing.assert_array_equal(starts, np.arange(16) * 24_100)
  assert starts[-1] + 80_000 <= 465_600


def test_chunk_starts_floor_rule_other_lengths():
  # Short-chunk CNN on the same clip (hop 25,409) and a hop that needs flooring.
  assert chunking.chunk_starts(465_600, 59_049, 16)[1] == 25_409
  np.testing.assert_array_equal(chunking.chunk_starts(1_000, 100, 4), [0, 225, 450, 675])
  np.testing.assert_array_equal(chunking.chunk_starts(1_003, 100, 4), [0, 225, 450, 675])


def test_chunk_starts_short_and_exact_tracks_start_at_zero():
  np.testing.assert_array_equal(chunking.chunk_starts(500, 800, 16), np.zeros(16))
  np.testing.assert_array_equal(chunking.chunk_starts(800, 800, 3), np.zeros(3))


def test_eval_chunks_long_track_are_the_slices():
  audio = np.arange(10_000, dtype=np.int16)
  chunks = chunking.eval_chunks(audio, 1_000, 16)
  assert chunks.shape == (16, 1_000) and chunks.dtype == np.int16
  hop = (10_000 - 1_000) // 16
  for i in range(16):
    np.testing.assert_array_equal(chunks[i], audio[i * hop:i * hop + 1_000])


def test_eval_chunks_short_track_padded_at_end_identical_chunks():
  audio = np.arange(1, 301, dtype=np.int16)
  chunks = chunking.eval_chunks(audio, 1_000, 16)
  assert chunks.shape == (16, 1_000)
  np.testing.assert_array_equal(chunks[:, :300], np.broadcast_to(audio, (16, 300)))
  assert not chunks[:, 300:].any()
  np.testing.assert_array_equal(chunking.eval_chunks(audio, 1_000, 16), chunks)


def test_random_crop_long_track_follows_reference_offset():
  audio = np.arange(5_000, dtype=np.int16)
  crop = chunking.random_crop(audio, 1_000, np.random.default_rng(7))
  u = np.random.default_rng(7).random()
  offset = int(np.floor(u * 4_000))
  np.testing.assert_array_equal(crop, audio[offset:offset + 1_000])


def test_random_crop_stays_inside_and_varies():
  audio = np.arange(3_000, dtype=np.int16)
  rng = np.random.default_rng(0)
  offsets = set()
  for _ in range(50):
    crop = chunking.random_crop(audio, 1_000, rng)
    assert crop.shape == (1_000,)
    # A contiguous slice of the track: consecutive sample numbers, fully inside.
    np.testing.assert_array_equal(np.diff(crop), 1)
    assert 0 <= crop[0] and crop[-1] < 3_000
    offsets.add(int(crop[0]))
  assert len(offsets) > 20


def test_random_crop_short_track_zero_padded_at_random_offset():
  audio = np.arange(1, 201, dtype=np.int16)
  rng = np.random.default_rng(1)
  offsets = set()
  for _ in range(30):
    out = chunking.random_crop(audio, 1_000, rng)
    assert out.shape == (1_000,)
    offset = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[offset:offset + 200], audio)
    assert np.count_nonzero(out) == 200
    offsets.add(offset)
  assert len(offsets) > 10 and min(offsets) >= 0 and max(offsets) <= 800


def test_exact_length_track_is_returned_whole():
  audio = np.arange(1_000, dtype=np.int16)
  np.testing.assert_array_equal(chunking.random_crop(audio, 1_000, np.random.default_rng(0)),
                                audio)


@pytest.mark.parametrize('call', [
    lambda: chunking.chunk_starts(1_000, 0),
    lambda: chunking.chunk_starts(1_000, 100, 0),
    lambda: chunking.eval_chunks(np.zeros((2, 100)), 50),
    lambda: chunking.random_crop(np.zeros(10), -1, np.random.default_rng(0)),
])
def test_bad_arguments_raise_value_error(call):
  with pytest.raises(ValueError):
    call()
