"""RVL, the lossless 16-bit depth codec of ``compressed_depth_image_transport`` (``compressedDepth rvl``).

A. D. Wilson, "Fast Lossless Depth Image Compression", ISS 2017: the pixels
are read in row order as alternating runs of zeros and of non-zero values;
each run length, and each non-zero value as the zig-zag coded difference to
the previous non-zero value, is written as a variable-length integer of 3-bit
groups (lowest first; the 4th bit of a nibble says "more follows"). Nibbles
fill 32-bit words from the most significant end; the words are stored in the
host's (little-endian) order, and the last word is padded with zero nibbles.

No maintained PyPI package decodes RVL (the only implementation is the C++
one inside the ROS plugin), so both directions are written here in NumPy:
the nibble stream is unpacked and every variable-length value decoded at
once; only the walk over the runs (a few thousand per Kinect frame) is a
Python loop. :func:`encode` exists so tests and ``cmcnn-bag-write`` can make
the exact byte stream the plugin's ``RvlCodec::CompressRVL`` writes.
"""

from __future__ import annotations

from typing import List

import numpy as np


class RvlError(ValueError):
    """An RVL stream is truncated or inconsistent with its pixel count."""


# A run length is at most the pixel count (< 2**31: 11 groups of 3 bits); a
# delta at most 17 bits. More continuation nibbles than this is corrupt data.
_MAX_GROUPS = 11
_WORD_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


def _nibbles(raw: np.ndarray) -> np.ndarray:
    """The nibbles of a little-endian 32-bit word stream, most significant first within each word."""
    word_bytes = raw.reshape(-1, 4)[:, ::-1]          # each word's bytes, most significant first
    return np.stack([word_bytes >> 4, word_bytes & 0xF], axis=-1).ravel()


def _values(nibbles: np.ndarray) -> np.ndarray:
    """Every complete variable-length value of a nibble stream, in order (int64)."""
    ends = np.flatnonzero((nibbles & 0x8) == 0)
    if ends.size == 0:
        return np.zeros(0, np.int64)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > _MAX_GROUPS:
        raise RvlError(f"a value spans {longest} nibbles (at most {_MAX_GROUPS} are possible): the stream is corrupt")
    data = (nibbles & 0x7).astype(np.int64)
    values = data[starts]
    # Most values are one or two nibbles: add the k-th group only where there is one.
    for k in range(1, longest):
        sel = np.flatnonzero(lengths > k)
        values[sel] |= data[starts[sel] + k] << (3 * k)
    return values


def decode(payload: "bytes | memoryview | np.ndarray", num_pixels: int) -> np.ndarray:
    """Decode an RVL stream of ``num_pixels`` values (``RvlCodec::DecompressRVL``).

    Args:
        payload: the stream (after the ``compressedDepth`` header and the
            8-byte ``cols, rows`` prefix).
        num_pixels: pixels to decode (``cols * rows``).

    Returns:
        ``uint16`` array of ``num_pixels`` values in row order.

    Raises:
        RvlError: the stream ends before ``num_pixels`` pixels, or its runs
            overrun the image.
    """
    raw = np.frombuffer(payload, np.uint8) if not isinstance(payload, np.ndarray) else payload.view(np.uint8)
    if raw.size % 4:
        raise RvlError(f"stream of {raw.size} B is not a whole number of 32-bit words")
    values = _values(_nibbles(raw))
    n = values.size
    # Walk the runs: (zeros, nonzeros, nonzeros deltas...) repeated. Each step
    # reads only the two counts, so this loop is short next to the pixel count.
    counts = memoryview(values)
    pairs: List[int] = []
    i = pos = 0
    while pos < num_pixels:
        if i + 1 >= n:
            raise RvlError(f"stream ends after {pos} of {num_pixels} pixels (truncated)")
        pairs.append(i)
        nonzeros = counts[i + 1]
        pos += counts[i] + nonzeros
        i += 2 + nonzeros
        if pos > num_pixels:
            raise RvlError(f"runs cover {pos} pixels, more than the image's {num_pixels}: the stream is corrupt "
                           "or the size in front of it is wrong")
        if i > n:
            raise RvlError(f"stream ends inside a run of {nonzeros} values (truncated)")
    at = np.asarray(pairs, np.int64)
    is_count = np.zeros(i, bool)
    is_count[at] = is_count[at + 1] = True
    positive = values[:i][~is_count]
    delta = (positive >> 1) ^ -(positive & 1)            # zig-zag back to a signed difference
    # Run lengths zeros, nonzeros, zeros, ... -> which pixels hold the non-zero values.
    lengths = np.stack([values[at], values[at + 1]], axis=1).ravel()
    nonzero = np.repeat(np.tile(np.array([False, True]), at.size), lengths)
    out = np.zeros(num_pixels, np.uint16)
    out[nonzero] = np.cumsum(delta) & 0xFFFF
    return out


def encode(depth: np.ndarray) -> bytes:
    """Encode ``uint16`` values in row order as the plugin's ``RvlCodec::CompressRVL`` does.

    Returns:
        the RVL stream (without the ``cols, rows`` prefix), whole 32-bit words.
    """
    flat = np.ascontiguousarray(depth, dtype=np.uint16).ravel()
    if flat.size == 0:
        return b""
    nonzero = flat != 0
    edges = np.flatnonzero(np.diff(nonzero.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    seg_len = np.diff(bounds)
    seg_nonzero = nonzero[bounds[:-1]]
    # Runs alternate zeros/non-zeros and start with a (possibly empty) zero run;
    # an image ending in zeros gets an empty non-zero run, as the C++ loop writes.
    if seg_nonzero[0]:
        seg_len = np.concatenate([[0], seg_len])
    if len(seg_len) % 2:
        seg_len = np.concatenate([seg_len, [0]])
    zeros, counts = seg_len[0::2].astype(np.int64), seg_len[1::2].astype(np.int64)
    current = flat[nonzero].astype(np.int64)
    delta = current - np.concatenate([[0], current[:-1]])
    positive = np.where(delta >= 0, 2 * delta, -2 * delta - 1)
    k = len(zeros)
    values = np.empty(2 * k + current.size, np.int64)
    pair_at = 2 * np.arange(k) + (np.cumsum(counts) - counts)
    is_pair = np.zeros(values.size, bool)
    is_pair[pair_at] = is_pair[pair_at + 1] = True
    values[pair_at], values[pair_at + 1] = zeros, counts
    values[~is_pair] = positive
    # Variable-length groups of 3 bits, lowest first, continuation bit on all but the last.
    groups = np.ones(values.size, np.int64)
    for bits in range(3, 3 * _MAX_GROUPS, 3):
        groups += values >= (1 << bits)
    which = np.repeat(np.arange(values.size), groups)
    index = np.arange(which.size) - np.repeat(np.cumsum(groups) - groups, groups)
    nibbles = ((values[which] >> (3 * index)) & 0x7) | ((index < groups[which] - 1).astype(np.int64) << 3)
    pad = (-nibbles.size) % 8
    words = np.concatenate([nibbles, np.zeros(pad, np.int64)]).reshape(-1, 8)
    packed = (words << _WORD_SHIFTS.astype(np.int64)).sum(axis=1).astype("<u4")
    return packed.tobytes()
