"""sensor_msgs/Image <-> NumPy for the CM-CNN node's RGB-D input.

The paper's pipeline (Ni et al., IEEE TCDS 2023, Section III-B) starts from
one colour frame and the depth frame registered to it. This module turns the
ROS messages into exactly that: a ``uint8`` BGR (or grey) image and a
``float32`` depth map in metres (0/NaN = no reading), the inputs of
:class:`cmcnn_ros.inference.recognizer.Recognizer`.

Decoding honours ``step`` (row padding) and ``is_bigendian``. Where the ROS 2
``cv_bridge`` is installed (an ament package, found through the ament index)
it does the decoding; otherwise NumPy does. The PyPI package called
``cv-bridge`` is an old ROS 1 port that decodes ``16UC1`` as ``uint8`` without
an error, so it is never used (it is not an ament package, so the ament-index
check rejects it).

Every message is validated first, whichever backend decodes it, so a bad
message always raises :class:`ImageConversionError` with the reason. Where
cv_bridge raises on a valid message (its big-endian path uses
``ndarray.newbyteorder``, gone in numpy 2), the NumPy path decodes it and
:func:`bridge_fallbacks` counts it.

The decoding functions only read the attributes ``height``, ``width``,
``encoding``, ``is_bigendian``, ``step`` and ``data``; they accept any object
with those (rclpy messages, rosbags messages), so they import without rclpy.
A ``sensor_msgs/CompressedImage`` (``format`` and ``data``, from
``image_transport``'s ``compressed`` / ``compressedDepth`` transports) is
decoded by :mod:`cmcnn_ros.ros.compressed` and then follows the same units.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from cmcnn_ros.ros import compressed

logger = logging.getLogger(__name__)


class ImageConversionError(ValueError):
    """An image message cannot be decoded; the message says why."""


@dataclass(frozen=True)
class _Encoding:
    dtype: np.dtype
    channels: int


# Encodings the node accepts. Colour: the common RGB-D driver outputs (Kinect
# v1 drivers rgb8, Azure Kinect bgra8, Kinect v2 bgr8). Depth: REP-118.
COLOUR_ENCODINGS: Dict[str, _Encoding] = {
    "rgb8": _Encoding(np.dtype(np.uint8), 3),
    "bgr8": _Encoding(np.dtype(np.uint8), 3),
    "rgba8": _Encoding(np.dtype(np.uint8), 4),
    "bgra8": _Encoding(np.dtype(np.uint8), 4),
    "mono8": _Encoding(np.dtype(np.uint8), 1),
}
DEPTH_ENCODINGS: Dict[str, _Encoding] = {
    "16UC1": _Encoding(np.dtype(np.uint16), 1),
    "mono16": _Encoding(np.dtype(np.uint16), 1),
    "32FC1": _Encoding(np.dtype(np.float32), 1),
}
# Metres per raw unit: 16-bit depth is millimetres, float depth is metres.
DEPTH_SCALE: Dict[str, float] = {"16UC1": 0.001, "mono16": 0.001, "32FC1": 1.0}


def _ros2_cv_bridge() -> Optional[Any]:
    """Return a ROS 2 ``CvBridge`` instance, or None when not installed.

    Only a cv_bridge registered in the ament index counts: the PyPI
    ``cv-bridge`` wheel (ROS 1 port, wrong 16-bit decoding) is not.
    """
    try:
        from ament_index_python.packages import get_package_share_directory
        get_package_share_directory("cv_bridge")
        from cv_bridge import CvBridge  # type: ignore[import-not-found]
        return CvBridge()
    except Exception:
        return None


_BRIDGE: Optional[Any] = None
_BRIDGE_CHECKED = False


def _bridge() -> Optional[Any]:
    global _BRIDGE, _BRIDGE_CHECKED
    if not _BRIDGE_CHECKED:
        _BRIDGE = _ros2_cv_bridge()
        _BRIDGE_CHECKED = True
        logger.debug("image decoding backend: %s", "cv_bridge" if _BRIDGE else "numpy")
    return _BRIDGE


def backend_name() -> str:
    """``"cv_bridge"`` when the ROS 2 cv_bridge decodes images, else ``"numpy"``."""
    return "cv_bridge" if _bridge() is not None else "numpy"


def is_compressed(msg: Any) -> bool:
    """True for a ``sensor_msgs/CompressedImage`` (it has ``format``, not ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _label(kind: str, topic: Optional[str]) -> str:
    """``"colour image"`` or ``"colour image on '/topic'"``: how errors name a message."""
    return f"{kind} image" if not topic else f"{kind} image on {topic!r}"


def _validate(msg: Any, table: Dict[str, _Encoding], what: str) -> _Encoding:
    """Check encoding, size, step and data length; return the encoding.

    Raises:
        ImageConversionError: unknown encoding, zero size, step too small,
            step not a multiple of the pixel size, or truncated data.
    """
    enc_name = str(msg.encoding)
    if enc_name not in table:
        raise ImageConversionError(
            f"{what}: unsupported encoding {enc_name!r}; expected one of {sorted(table)}")
    enc = table[enc_name]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"{what}: empty ({w}x{h})")
    row_bytes = w * enc.channels * enc.dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"{what}: step {step} is smaller than one row of {w} px x "
            f"{enc.channels * enc.dtype.itemsize} B = {row_bytes} B ({enc_name})")
    if step % enc.dtype.itemsize:
        raise ImageConversionError(
            f"{what}: step {step} is not a multiple of the {enc.dtype.itemsize}-byte "
            f"element of {enc_name}")
    n = len(msg.data)
    # The last row need not carry its padding.
    needed = step * (h - 1) + row_bytes
    if n < needed:
        raise ImageConversionError(
            f"{what}: data truncated: {n} B for {w}x{h} {enc_name} with step {step} "
            f"(need at least {needed} B)")
    return enc


def _decode_numpy(msg: Any, enc: _Encoding) -> np.ndarray:
    """Decode a validated message to ``HxW`` or ``HxWxC`` in native byte order."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    raw = compressed.as_bytes(msg.data)
    pixel = enc.channels * enc.dtype.itemsize
    # Pad so the last row (which may lack padding) fills a full step.
    total = step * h
    if raw.size < total:
        raw = np.concatenate([raw, np.zeros(total - raw.size, np.uint8)])
    rows = raw[:total].reshape(h, step)[:, : w * pixel]
    dtype = enc.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(dtype).reshape(h, w, enc.channels)
    arr = arr.astype(enc.dtype, copy=False)  # to native byte order
    return arr[:, :, 0] if enc.channels == 1 else arr


class _Fallbacks:
    """Messages cv_bridge failed on and NumPy decoded instead (thread-safe counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.last_error = ""

    def add(self, error: str) -> int:
        with self._lock:
            self.count += 1
            self.last_error = error
            return self.count


BRIDGE_FALLBACKS = _Fallbacks()


def bridge_fallbacks() -> int:
    """How many messages cv_bridge raised on and NumPy decoded instead (the node's diagnostics)."""
    return BRIDGE_FALLBACKS.count


def _decode(msg: Any, enc: _Encoding) -> np.ndarray:
    bridge = _bridge()
    if bridge is None:
        return _decode_numpy(msg, enc)
    try:
        arr = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception as exc:
        # The message passed _validate, so the NumPy path decodes it. Seen: ROS 2
        # cv_bridge calls ndarray.newbyteorder() on big-endian images, which numpy 2 removed.
        n = BRIDGE_FALLBACKS.add(f"{type(exc).__name__}: {exc}")
        if n == 1:
            logger.warning("cv_bridge could not decode a %s image (%s: %s); decoding with NumPy instead "
                        "(counted in the diagnostics as 'cv_bridge fallbacks')", msg.encoding,
                        type(exc).__name__, exc)
        return _decode_numpy(msg, enc)
    return arr.astype(enc.dtype, copy=False)


def colour_to_bgr(msg: Any, topic: Optional[str] = None) -> np.ndarray:
    """Decode a colour image message to OpenCV order.

    Args:
        msg: ``sensor_msgs/Image`` (or anything with its fields) in ``rgb8``,
            ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``; or a
            ``sensor_msgs/CompressedImage`` of the ``compressed`` transport.
        topic: named in the error messages.

    Returns:
        ``uint8`` ``HxWx3`` BGR, or ``HxW`` grey for ``mono8`` (the
        preprocessor accepts both).

    Raises:
        ImageConversionError: unknown encoding, bad step, truncated data.
    """
    if is_compressed(msg):
        try:
            return compressed.decode_colour(msg.format, msg.data)
        except compressed.CompressedImageError as exc:
            raise ImageConversionError(f"{_label('compressed colour', topic)}: {exc}") from None
    enc = _validate(msg, COLOUR_ENCODINGS, _label("colour", topic))
    arr = _decode(msg, enc)
    name = str(msg.encoding)
    if name == "bgr8" or name == "mono8":
        return np.ascontiguousarray(arr)
    if name == "rgb8":
        return np.ascontiguousarray(arr[:, :, ::-1])
    if name == "bgra8":
        return np.ascontiguousarray(arr[:, :, :3])
    return np.ascontiguousarray(arr[:, :, 2::-1])  # rgba8


def _in_metres(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Depth of ``encoding`` (raw or decompressed) in metres: the one unit conversion of both paths."""
    scale = DEPTH_SCALE[encoding]
    # 32FC1 is already metres: no copy here (the recognizer copies once, before filling holes).
    if scale == 1.0:
        return np.ascontiguousarray(arr, dtype=np.float32)
    return arr.astype(np.float32) * np.float32(scale)


def depth_to_metres(msg: Any, topic: Optional[str] = None) -> np.ndarray:
    """Decode a depth image message to metres.

    Args:
        msg: ``16UC1``/``mono16`` (millimetres) or ``32FC1`` (metres); or a
            ``sensor_msgs/CompressedImage`` of the ``compressedDepth`` transport.
        topic: named in the error messages.

    Returns:
        ``float32`` ``HxW`` metres; 0 or NaN where there is no reading (as
        sent; the preprocessor treats both as holes).

    Raises:
        ImageConversionError: unknown encoding, bad step, truncated data.
    """
    if is_compressed(msg):
        try:
            arr, encoding = compressed.decode_depth(msg.format, msg.data)
        except compressed.CompressedImageError as exc:
            raise ImageConversionError(f"{_label('compressedDepth', topic)}: {exc}") from None
        return _in_metres(arr, encoding)
    enc = _validate(msg, DEPTH_ENCODINGS, _label("depth", topic))
    return _in_metres(_decode(msg, enc), str(msg.encoding))


def frame_pair(colour_msg: Any, depth_msg: Optional[Any],
               topics: Tuple[Optional[str], Optional[str]] = (None, None)
               ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Decode a synchronised colour/depth pair for the recognizer.

    Args:
        colour_msg: colour image message (``Image`` or ``CompressedImage``).
        depth_msg: registered depth image message (``Image`` or
            ``compressedDepth`` ``CompressedImage``), or None (colour only).
        topics: ``(colour topic, depth topic)`` named in the error messages.

    Returns:
        ``(colour_bgr, depth_m)``; ``depth_m`` is None when ``depth_msg`` is.

    Raises:
        ImageConversionError: either message is bad, or their sizes differ
            (the depth must be registered to the colour image).
    """
    colour = colour_to_bgr(colour_msg, topics[0])
    if depth_msg is None:
        return colour, None
    depth = depth_to_metres(depth_msg, topics[1])
    if depth.shape[:2] != colour.shape[:2]:
        raise ImageConversionError(
            f"colour is {colour.shape[1]}x{colour.shape[0]} but depth is "
            f"{depth.shape[1]}x{depth.shape[0]}: the depth topic must carry depth registered "
            "to the colour image (e.g. depth_registered/image_raw, depth_to_rgb/image_raw)")
    return colour, depth


def array_to_image_fields(array: np.ndarray, encoding: str, *, step: Optional[int] = None,
                          bigendian: bool = False) -> Dict[str, Any]:
    """Fields of a ``sensor_msgs/Image`` holding ``array`` (inverse of decoding).

    Used for the debug image and by tests/tools that publish frames.

    Args:
        array: ``HxW`` or ``HxWxC`` image whose dtype/channels match ``encoding``.
        encoding: one of the colour or depth encodings above.
        step: row stride in bytes (>= one row); default: no padding.
        bigendian: store multi-byte elements big-endian.

    Returns:
        dict with ``height``, ``width``, ``encoding``, ``is_bigendian``,
        ``step``, ``data`` (bytes).

    Raises:
        ImageConversionError: encoding unknown or not matching the array.
    """
    table = {**COLOUR_ENCODINGS, **DEPTH_ENCODINGS}
    if encoding not in table:
        raise ImageConversionError(f"unsupported encoding {encoding!r}")
    enc = table[encoding]
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != enc.channels:
        raise ImageConversionError(
            f"array of shape {np.shape(array)} does not fit {encoding} ({enc.channels} channels)")
    h, w = arr.shape[:2]
    arr = arr.astype(enc.dtype.newbyteorder(">" if bigendian else "<"), copy=False)
    row = w * enc.channels * enc.dtype.itemsize
    step = row if step is None else int(step)
    if step < row:
        raise ImageConversionError(f"step {step} < row size {row}")
    body = np.ascontiguousarray(arr).view(np.uint8).reshape(h, row)
    if step > row:
        body = np.concatenate([body, np.zeros((h, step - row), np.uint8)], axis=1)
    return {"height": h, "width": w, "encoding": encoding,
            "is_bigendian": int(bool(bigendian)), "step": step, "data": body.tobytes()}


def native_is_bigendian() -> bool:
    """True on big-endian hosts (what drivers normally put in ``is_bigendian``)."""
    return sys.byteorder == "big"
