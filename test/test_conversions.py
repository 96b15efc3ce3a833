"""Image message decoding checked against rosbags-image as an independent reference.

rosbags-image 0.10 ignores ``step`` (it reads ``height*width`` elements from the
start of ``data``), so for padded messages the reference is its decoding of the
same pixels sent without padding; ours must give the same array for both.
"""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore

from cmcnn_ros.ros.conversions import (
    ImageConversionError, array_to_image_fields, colour_to_bgr, depth_to_metres, frame_pair)

TS = get_typestore(Stores.ROS2_KILTED)
Image = TS.types["sensor_msgs/msg/Image"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]


def make_msg(array: np.ndarray, encoding: str, step=None, bigendian=False):
    f = array_to_image_fields(array, encoding, step=step, bigendian=bigendian)
    return Image(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
                 height=f["height"], width=f["width"], encoding=f["encoding"],
                 is_bigendian=f["is_bigendian"], step=f["step"],
                 data=np.frombuffer(f["data"], np.uint8).copy())


RNG = np.random.default_rng(0)
BGR = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding,array,expect_bgr", [
    ("bgr8", BGR, BGR),
    ("rgb8", BGR[:, :, ::-1], BGR),
    ("bgra8", np.dstack([BGR, np.full(BGR.shape[:2], 9, np.uint8)]), BGR),
    ("rgba8", np.dstack([BGR[:, :, ::-1], np.full(BGR.shape[:2], 9, np.uint8)]), BGR),
    ("mono8", BGR[:, :, 0], BGR[:, :, 0]),
])
@pytest.mark.parametrize("pad", [0, 3, 16])
def test_colour_matches_rosbags_image(encoding, array, expect_bgr, pad):
    row = array.shape[1] * (array.shape[2] if array.ndim == 3 else 1)
    msg = make_msg(array, encoding, step=row + pad)
    ours = colour_to_bgr(msg)
    ref = message_to_cvimage(make_msg(array, encoding), "mono8" if encoding == "mono8" else "bgr8")
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours, expect_bgr)
    assert ours.dtype == np.uint8


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_16bit_depth_is_millimetres(encoding, bigendian, pad):
    mm = RNG.integers(0, 12000, (6, 4), dtype=np.uint16)
    mm[0, 0] = 11000  # the value the PyPI cv-bridge mangled
    msg = make_msg(mm, encoding, step=4 * 2 + pad, bigendian=bigendian)
    ref = message_to_cvimage(make_msg(mm, encoding, bigendian=bigendian))
    np.testing.assert_array_equal(ref, mm)  # the reference decodes it the same way
    ours = depth_to_metres(msg)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.astype(np.float64) * 0.001, rtol=1e-6)
    assert ours[0, 0] == pytest.approx(11.0)


@pytest.mark.parametrize("bigendian", [False, True])
def test_float_depth_is_metres_with_nan(bigendian):
    m = RNG.uniform(0.3, 4.0, (5, 3)).astype(np.float32)
    m[1, 1] = np.nan
    m[2, 2] = 0.0
    msg = make_msg(m, "32FC1", step=3 * 4 + 8, bigendian=bigendian)
    ref = message_to_cvimage(make_msg(m, "32FC1", bigendian=bigendian))
    ours = depth_to_metres(msg)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(ours[~np.isnan(ours)], ref[~np.isnan(ref)])
    np.testing.assert_array_equal(ours[~np.isnan(ours)], m[~np.isnan(m)])


def test_last_row_without_padding_is_accepted():
    msg = make_msg(BGR, "bgr8", step=5 * 3 + 4)
    msg.data = msg.data[:-4]
    np.testing.assert_array_equal(colour_to_bgr(msg), BGR)


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding 'yuv422'"),
    (lambda m: setattr(m, "step", 14), "step 14 is smaller than one row"),
    (lambda m: setattr(m, "data", m.data[:50]), "data truncated: 50 B"),
    (lambda m: setattr(m, "height", 0), "empty"),
])
def test_bad_colour_messages_say_why(mutate, reason):
    msg = make_msg(BGR, "bgr8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=reason):
        colour_to_bgr(msg)


def test_depth_step_not_multiple_of_element():
    msg = make_msg(np.zeros((3, 4), np.uint16), "16UC1", step=9)
    with pytest.raises(ImageConversionError, match="not a multiple"):
        depth_to_metres(msg)


def test_colour_encoding_on_depth_topic_rejected():
    with pytest.raises(ImageConversionError, match="depth image: unsupported encoding 'bgr8'"):
        depth_to_metres(make_msg(BGR, "bgr8"))


def test_pair_size_mismatch():
    colour = make_msg(BGR, "bgr8")
    depth = make_msg(np.zeros((3, 3), np.uint16), "16UC1")
    with pytest.raises(ImageConversionError, match="colour is 5x7 but depth is 3x3"):
        frame_pair(colour, depth)
    c, d = frame_pair(colour, make_msg(np.full((7, 5), 800, np.uint16), "16UC1"))
    assert c.shape == (7, 5, 3) and d.shape == (7, 5)
    assert np.allclose(d, 0.8)
    assert frame_pair(colour, None)[1] is None


def test_works_with_rclpy_messages():
    from sensor_msgs.msg import Image as RosImage

    mm = RNG.integers(0, 5000, (6, 4), dtype=np.uint16)
    f = array_to_image_fields(mm, "16UC1", step=12, bigendian=True)
    msg = RosImage(**f)
    np.testing.assert_allclose(depth_to_metres(msg), mm * 0.001, rtol=1e-6)
    c = RosImage(**array_to_image_fields(BGR[:, :, ::-1], "rgb8", step=20))
    np.testing.assert_array_equal(colour_to_bgr(c), BGR)


class _Ros2CvBridgePassthrough:
    """The decoding steps of the ROS 2 cv_bridge's ``CvBridge.imgmsg_to_cv2(msg, "passthrough")``
    (vision_opencv ``cv_bridge/core.py``) for one-channel images; cv_bridge itself is an ament
    package that PyPI does not have. Its big-endian branch raises as it does on a robot with numpy 2,
    whichever numpy runs the test."""

    DTYPES = {"16UC1": (np.uint16, 1), "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}

    def imgmsg_to_cv2(self, img_msg, desired_encoding="passthrough"):
        import sys

        dtype, _ = self.DTYPES[img_msg.encoding]
        dtype = np.dtype(dtype).newbyteorder(">" if img_msg.is_bigendian else "<")
        im = np.ndarray(shape=(img_msg.height, int(img_msg.step / dtype.itemsize)), dtype=dtype,
                        buffer=bytes(img_msg.data))
        im = np.ascontiguousarray(im[:img_msg.height, :img_msg.width])
        if img_msg.is_bigendian == (sys.byteorder == "little"):
            # cv_bridge: im.byteswap().newbyteorder(). numpy 2 removed ndarray.newbyteorder, numpy 1 has it:
            # raise numpy 2's error here so the fallback is tested under either.
            raise AttributeError("'numpy.ndarray' object has no attribute 'newbyteorder'")
        return im


def test_cv_bridge_failure_falls_back_to_numpy_and_is_counted(monkeypatch):
    """Issue 10.4: where cv_bridge raises on a valid image, the NumPy path decodes it (not dropped)."""
    from cmcnn_ros.ros import conversions

    monkeypatch.setattr(conversions, "_BRIDGE", _Ros2CvBridgePassthrough())
    monkeypatch.setattr(conversions, "_BRIDGE_CHECKED", True)
    assert conversions.backend_name() == "cv_bridge"
    depth_mm = RNG.integers(0, 12000, (6, 9)).astype(np.uint16)
    little = make_msg(depth_mm, "16UC1")
    before = conversions.bridge_fallbacks()
    np.testing.assert_allclose(depth_to_metres(little), depth_mm * np.float32(0.001))   # bridge decodes
    assert conversions.bridge_fallbacks() == before
    metres = RNG.random((6, 9)).astype(np.float32) * 4
    for msg, expect in ((make_msg(depth_mm, "16UC1", step=24, bigendian=True), depth_mm * np.float32(0.001)),
                        (make_msg(metres, "32FC1", bigendian=True), metres)):
        np.testing.assert_array_equal(depth_to_metres(msg), expect)
    assert conversions.bridge_fallbacks() == before + 2
    assert "newbyteorder" in conversions.BRIDGE_FALLBACKS.last_error
