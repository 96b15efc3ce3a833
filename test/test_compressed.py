"""image_transport's compressed transports: messages built the way the plugins build them, decoded.

The messages are rosbags ``sensor_msgs/msg/CompressedImage`` whose ``format``
and ``data`` are made here independently of the package's encoder where it
matters (OpenCV's ``imencode`` with the plugins' parameters, the
``ConfigHeader`` packed by hand, an RVL stream worked out by hand from
``RvlCodec::CompressRVL``), then also through :mod:`cmcnn_ros.ros.compressed`'s
encoder, whose bytes must equal the hand-made ones.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore

from cmcnn_ros.ros import compressed, rvl
from cmcnn_ros.ros.conversions import ImageConversionError, colour_to_bgr, depth_to_metres, frame_pair

TS = get_typestore(Stores.ROS2_KILTED)
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]


def cmsg(fmt: str, data: bytes):
    return CompressedImage(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"), format=fmt,
                           data=np.frombuffer(data, np.uint8).copy())


@pytest.fixture(scope="module")
def bgr(astronaut_frame):
    return astronaut_frame


@pytest.fixture(scope="module")
def depth_mm():
    """A Kinect-like registered depth frame: a slanted wall, a nearer head, holes and far readings."""
    y, x = np.mgrid[0:480, 0:640]
    d = (1500 + 2 * x + y).astype(np.uint16)
    head = (x - 320) ** 2 + (y - 200) ** 2 < 90 ** 2
    d[head] = (800 + ((x[head] - 320) ** 2 + (y[head] - 200) ** 2) // 200).astype(np.uint16)
    d[::37, ::23] = 0
    d[400:430, 10:60] = 0
    d[5, 5], d[6, 6] = 9999, 10000      # the plugin's depth_max (10 m) keeps these
    return d


# ---------------------------------------------------------------- colour

@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_colour_formats_as_the_plugin_writes_them(bgr, encoding, codec):
    """format "<enc>; <codec> compressed bgr8" ("... compressed " for mono8), pixels converted to bgr8 first."""
    raw = {"rgb8": bgr[:, :, ::-1], "bgr8": bgr, "rgba8": np.dstack([bgr[:, :, ::-1], bgr[:, :, :1]]),
           "bgra8": np.dstack([bgr, bgr[:, :, :1]]), "mono8": bgr[:, :, 1]}[encoding]
    fmt, data = compressed.encode_colour(raw, encoding, codec)
    target = "" if encoding == "mono8" else "bgr8"
    assert fmt == f"{encoding}; {codec} compressed {target}"
    # What the plugin compresses: bgr8 (or mono8) pixels with OpenCV at its default settings.
    pixels = bgr[:, :, 1] if encoding == "mono8" else bgr
    params = ([cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, 0, cv2.IMWRITE_JPEG_OPTIMIZE, 0,
               cv2.IMWRITE_JPEG_RST_INTERVAL, 0] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert data == cv2.imencode(".jpg" if codec == "jpeg" else ".png", pixels, params)[1].tobytes()
    out = colour_to_bgr(cmsg(fmt, data))
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    if codec == "png":
        np.testing.assert_array_equal(out, pixels)                  # lossless
    else:
        err = np.abs(out.astype(np.int16) - pixels.astype(np.int16))
        assert err.mean() < 2.0 and np.percentile(err, 99) <= 12, (err.mean(), np.percentile(err, 99))
    if encoding != "mono8":   # an independent decoder of the same bytes agrees
        np.testing.assert_array_equal(out, message_to_cvimage(cmsg(fmt, data), "bgr8"))


def test_older_colour_formats(bgr):
    """The first plugin versions wrote the bare codec name; a target-less format keeps the encoding's order."""
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    png_grey = cv2.imencode(".png", bgr[:, :, 0])[1].tobytes()
    np.testing.assert_array_equal(colour_to_bgr(cmsg("jpeg", jpeg)), cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1))
    np.testing.assert_array_equal(colour_to_bgr(cmsg("png", png_grey)), bgr[:, :, 0])
    # rgb8 pixels compressed as they were (no "compressed bgr8"): R was stored first.
    rgb_as_is = cv2.imencode(".png", np.ascontiguousarray(bgr[:, :, ::-1]))[1].tobytes()
    np.testing.assert_array_equal(colour_to_bgr(cmsg("rgb8; png compressed rgb8", rgb_as_is)), bgr)


# ---------------------------------------------------------------- depth

def _plugin_16uc1(depth: np.ndarray, codec: str) -> bytes:
    """The bytes compressed_depth_image_transport publishes for 16UC1, made here by hand."""
    d = depth.copy()
    d[d > 10000] = 0                                       # depth_max 10 m filter
    header = struct.pack("<iff", 0, 0.0, 0.0)              # ConfigHeader{INV_DEPTH, {0, 0}} (value-initialised)
    if codec == "png":
        return header + cv2.imencode(".png", d, [cv2.IMWRITE_PNG_COMPRESSION, 3])[1].tobytes()
    return header + struct.pack("<II", d.shape[1], d.shape[0]) + rvl.encode(d)


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_16uc1_round_trips_exactly(depth_mm, codec):
    fmt, data = compressed.encode_depth(depth_mm, "16UC1", codec)
    assert fmt == f"16UC1; compressedDepth {codec}"
    assert data == _plugin_16uc1(depth_mm, codec)
    arr, encoding = compressed.decode_depth(fmt, data)
    assert encoding == "16UC1" and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, depth_mm)            # every value <= 10 m survives bit for bit
    metres = depth_to_metres(cmsg(fmt, data))
    np.testing.assert_array_equal(np.rint(metres * 1000).astype(np.int64), depth_mm.astype(np.int64))
    # Beyond depth_max the plugin drops the reading (0 = no reading).
    far = depth_mm.copy()
    far[7, 7] = 12000
    assert compressed.decode_depth(*compressed.encode_depth(far, "16UC1", codec))[0][7, 7] == 0


def test_old_compressed_depth_format_is_png(depth_mm):
    """Before the codec choice the format was "16UC1; compressedDepth" (PNG), or just the encoding."""
    data = _plugin_16uc1(depth_mm, "png")
    for fmt in ("16UC1; compressedDepth", "16UC1", "mono16; compressedDepth png"):
        np.testing.assert_array_equal(compressed.decode_depth(fmt, data)[0], depth_mm)


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_32fc1_inverse_depth_quantisation(depth_mm, codec):
    """32FC1: q = A/d + B truncated to 16 bits, A = z0 (z0 + 1), B = 1 - A / depth_max, in the header."""
    d = depth_mm.astype(np.float32) / 1000
    d[depth_mm == 0] = np.nan
    d[0, 0], d[0, 1], d[0, 2] = 0.0, 10.0, 25.0             # no reading, at and beyond depth_max
    fmt, data = compressed.encode_depth(d, "32FC1", codec)
    assert fmt == f"32FC1; compressedDepth {codec}"
    a, b = 100.0 * 101.0, 1.0 - 100.0 * 101.0 / 10.0
    assert data[:12] == struct.pack("<iff", 0, a, b)
    # The quantised image, made by hand the way the plugin's loop does.
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(np.isfinite(d) & (d > 0) & (d < 10.0), np.float32(a) / d + np.float32(b), 0)
    q = q.astype(np.uint16)
    if codec == "png":
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data[12:], np.uint8), cv2.IMREAD_UNCHANGED), q)
    arr, encoding = compressed.decode_depth(fmt, data)
    assert encoding == "32FC1" and arr.dtype == np.float32
    valid = q > 0
    assert np.isnan(arr[~valid]).all() and not np.isnan(arr[valid]).any()
    assert np.isnan(arr[0, :3]).all()
    err = arr[valid] - d[valid]
    # Truncation only ever rounds the inverse down: decoded depth is never nearer, and at most one
    # quantisation step (d^2 / A: 0.1 mm at 1 m, 1 cm at 10 m) further.
    assert err.min() >= -1e-6
    assert np.all(err <= d[valid] ** 2 / a * 1.01 + 1e-6)
    np.testing.assert_allclose(depth_to_metres(cmsg(fmt, data)), arr, equal_nan=True)


def test_rvl_stream_matches_the_cpp_codec_by_hand():
    """[0, 0, 5, 6, 0]: runs (2 zeros, 2 values: zig-zag 10 and 2), (1 zero, 0 values); nibbles
    2 2 | A 1 | 2 | 1 0 (10 = 0b001 010: low group 2 with the continuation bit, then 1), MSB first, padded."""
    stream = struct.pack("<I", 0x22A12100)
    assert rvl.encode(np.array([0, 0, 5, 6, 0], np.uint16)) == stream
    np.testing.assert_array_equal(rvl.decode(stream, 5), [0, 0, 5, 6, 0])
    # Deltas wrap like the C++ uint16 arithmetic; long runs need several groups.
    values = np.array([65535, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40000] + [0] * 70, np.uint16)
    np.testing.assert_array_equal(rvl.decode(rvl.encode(values), values.size), values)
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 65536, 5000).astype(np.uint16)
    noise[rng.random(5000) < 0.4] = 0
    np.testing.assert_array_equal(rvl.decode(rvl.encode(noise), noise.size), noise)


# ---------------------------------------------------------------- bad input

def test_bad_colour_messages_say_what_and_what_to_do(bgr):
    fmt, jpeg = compressed.encode_colour(bgr, "bgr8", "jpeg")
    pfmt, png = compressed.encode_colour(bgr, "bgr8", "png")
    dfmt, depth = compressed.encode_depth(np.full((4, 4), 900, np.uint16))
    cases = [
        (fmt, jpeg[:5000], "JPEG payload of 5000 B has no JPEG end marker: the payload is truncated"),
        (pfmt, png[:-30], "ends before the PNG's IEND chunk: the payload is truncated"),
        (pfmt, png[:3000] + bytes(200) + png[3200:], "PNG payload of .* could not be decoded: the payload is corrupt"),
        (fmt, png, r"JPEG payload is not a JPEG stream \(it starts with 89 50 4e 47"),
        (fmt, b"", "JPEG payload is empty"),
        ("bgr8; tiff compressed bgr8", jpeg, "unknown format string 'bgr8; tiff compressed bgr8'.*republish"),
        ("h264", jpeg, "unknown format string 'h264'"),
        ("yuv422; jpeg compressed ", jpeg, "encoding 'yuv422' is not one the recognizer reads"),
        (dfmt, depth, "is a compressedDepth \\(depth\\) stream, not colour"),
        ("rgb16; png compressed bgr16", cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes(),
         "encoding 'rgb16' is not one the recognizer reads"),
    ]
    for f, data, reason in cases:
        with pytest.raises(ImageConversionError, match=reason):
            colour_to_bgr(cmsg(f, data), "/cam/image_raw/compressed")
    with pytest.raises(ImageConversionError, match=r"^compressed colour image on '/cam/image_raw/compressed': "):
        colour_to_bgr(cmsg(fmt, b"\x00"), "/cam/image_raw/compressed")


def test_bad_depth_messages_say_what_and_what_to_do(depth_mm, bgr):
    fmt, data = compressed.encode_depth(depth_mm, "16UC1", "png")
    rfmt, rdata = compressed.encode_depth(depth_mm, "16UC1", "rvl")
    ffmt, fdata = compressed.encode_depth(depth_mm.astype(np.float32) / 1000, "32FC1", "png")
    cases = [
        (fmt, data[:3000], "ends before the PNG's IEND chunk: the payload is truncated"),
        (fmt, data[:10], "payload of 10 B is too short for the 12-byte compressedDepth header"),
        (fmt, data[12:], "a bare PNG without the 12-byte compressedDepth header"),
        (fmt, struct.pack("<iff", 3, 0, 0) + data[12:], "header's format field is 3, not 0"),
        ("32FC1; compressedDepth png", data, r"inverse-depth parameters \(0, 0\) cannot decode depth.*header does "
                                             "not match the payload"),
        (ffmt, fdata[:12] + cv2.imencode(".png", bgr)[1].tobytes(), "the PNG holds uint8 x 3 channel"),
        (rfmt, rdata[:4000], r"RVL payload \(640x480\): stream ends"),
        (rfmt, rdata[:12] + struct.pack("<II", 0, 480) + rdata[20:], "says the image is 0x480"),
        (rfmt, rdata[:12] + struct.pack("<II", 640, 240) + rdata[20:], "more than the image's 153600"),
        ("16UC1; compressedDepth zstd", data, "codec 'zstd' is unknown.*republish node \\(in_transport "
                                               "compressedDepth, out_transport raw\\)"),
        ("bgr8; jpeg compressed bgr8", data, "is a colour 'compressed' \\(jpeg/png\\) stream, not compressedDepth"),
        ("8UC3; compressedDepth png", data, "depth encoding '8UC3' is not one of"),
    ]
    for f, payload, reason in cases:
        with pytest.raises(ImageConversionError, match=reason):
            depth_to_metres(cmsg(f, payload), "/cam/depth/compressedDepth")


def test_frame_pair_mixes_transports_and_checks_registration(bgr, depth_mm):
    c = cmsg(*compressed.encode_colour(bgr, "bgr8", "png"))
    d = cmsg(*compressed.encode_depth(depth_mm, "16UC1", "rvl"))
    colour, depth = frame_pair(c, d)
    np.testing.assert_array_equal(colour, bgr)
    assert depth.dtype == np.float32 and depth[200, 320] == pytest.approx(0.8)
    small = cmsg(*compressed.encode_depth(depth_mm[::2, ::2], "16UC1", "png"))
    with pytest.raises(ImageConversionError, match="colour is 640x480 but depth is 320x240"):
        frame_pair(c, small)
    with pytest.raises(ImageConversionError, match="^compressedDepth image on '/d/compressedDepth': "):
        frame_pair(c, cmsg("16UC1; compressedDepth png", b"x" * 40), ("/c/compressed", "/d/compressedDepth"))


def test_transport_topic_names():
    assert compressed.transport_topic("/camera/color/image_raw", "compressed") == "/camera/color/image_raw/compressed"
    assert compressed.transport_topic("image", "compressedDepth") == "image/compressedDepth"
    assert compressed.transport_topic("/a/b", "raw") == "/a/b"
    assert compressed.split_transport_topic("/a/b/compressedDepth") == ("/a/b", "compressedDepth")
    assert compressed.split_transport_topic("/a/b/compressed") == ("/a/b", "compressed")
    assert compressed.split_transport_topic("/a/b") == ("/a/b", "raw")
