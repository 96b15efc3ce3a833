"""``image_transport``'s compressed transports, decoded and encoded without ROS.

Robots send and record images through ``image_transport``: colour as
``sensor_msgs/CompressedImage`` on ``<base>/compressed`` (the
``compressed_image_transport`` plugin: JPEG or PNG) and depth on
``<base>/compressedDepth`` (``compressed_depth_image_transport``: PNG or RVL
behind a 12-byte configuration header). This module turns the ``format``
string and ``data`` bytes of such a message into the arrays the CM-CNN
pipeline reads (Ni et al., IEEE TCDS 2023, Section III-B: one colour frame and
the depth registered to it), and makes those bytes the way the plugins make
them, for tests and ``cmcnn-bag-write``. The layouts follow the plugins'
sources (image_transport_plugins, ``compressed_publisher.cpp``,
``compressed_subscriber.cpp``, ``codec.cpp``, ``compression_common.h``):

* colour ``format``: ``"<encoding>; <jpeg|png> compressed <target>"``, where
  the publisher converted colour to ``bgr8`` first (target ``bgr8``; empty for
  ``mono8``), e.g. ``"rgb8; jpeg compressed bgr8"``; the first versions wrote
  the bare codec name (``"jpeg"``) and BGR or grey data.
* depth ``format``: ``"<16UC1|32FC1>; compressedDepth <png|rvl>"`` (older
  versions: ``"16UC1; compressedDepth"``, PNG). ``data`` starts with
  ``ConfigHeader {int32 format; float32 depthParam[2]}`` (little-endian, 12
  bytes; ``format`` 0 = inverse depth). ``16UC1`` is stored as is (values
  above ``depth_max`` zeroed); ``32FC1`` as ``uint16`` inverse depth
  ``q = A / d + B`` with ``A = z0 (z0 + 1)``, ``B = 1 - A / depth_max`` in
  ``depthParam`` (0 = no reading), decoded ``d = A / (q - B)``. RVL data is
  ``uint32 cols, uint32 rows`` and the stream of :mod:`cmcnn_ros.ros.rvl`.

Everything that can be wrong with a message raises
:class:`CompressedImageError` with one sentence saying what and what to do;
the callers (:mod:`cmcnn_ros.ros.conversions`) add which topic it came from.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Tuple

import cv2
import numpy as np

from cmcnn_ros.ros import rvl

COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
# The transports the node subscribes to, per stream (image_transport's names).
COLOUR_TRANSPORTS = ("raw", "compressed")
DEPTH_TRANSPORTS = ("raw", "compressedDepth")

# The plugins' defaults (ROS 2): compressed jpeg_quality 95, png_level 3;
# compressedDepth png_level 3, depth_max 10 m, depth_quantization 100.
JPEG_QUALITY = 95
PNG_LEVEL = 3
DEPTH_MAX_M = 10.0
DEPTH_QUANTIZATION = 100.0

HEADER = struct.Struct("<iff")          # ConfigHeader {int32 format; float32 depthParam[2]}
INV_DEPTH = 0                           # compressionFormat INV_DEPTH, the only one ever written
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
_REPUBLISH = ("run image_transport's republish node (in_transport {transport}, out_transport raw) and read its "
              "output as raw (colour_transport / depth_transport: raw)")
_COLOUR_RE = re.compile(r"(jpeg|png)\s+compressed(?:\s+(\S+))?")
_DEPTH_RE = re.compile(r"compressedDepth(?:\s+(\S+))?")


class CompressedImageError(ValueError):
    """A ``CompressedImage`` cannot be decoded; the message says why and what to do."""


def transport_topic(base: str, transport: str) -> str:
    """The topic ``image_transport`` uses for ``transport`` of ``base`` (``raw``: the base itself)."""
    if transport == "raw":
        return base
    return f"{base.rstrip('/')}/{transport}"


def split_transport_topic(topic: str) -> Tuple[str, str]:
    """``(base, transport)`` of a topic name: ``/a/image/compressed`` -> ``("/a/image", "compressed")``."""
    for transport in ("compressedDepth", "compressed"):
        if topic.endswith("/" + transport):
            return topic[: -len(transport) - 1], transport
    return topic, "raw"


@dataclass(frozen=True)
class ColourFormat:
    """A parsed ``compressed`` format: the codec and the channel order of the decoded pixels."""

    encoding: str   # the original image's encoding ("" for the bare old format)
    codec: str      # "jpeg" or "png"
    order: str      # channel order of the compressed pixels: "bgr", "rgb" or "mono"


@dataclass(frozen=True)
class DepthFormat:
    """A parsed ``compressedDepth`` format."""

    encoding: str   # "16UC1", "mono16" or "32FC1"
    codec: str      # "png" or "rvl"


def parse_colour_format(fmt: str) -> ColourFormat:
    """Parse a ``compressed_image_transport`` format string.

    Raises:
        CompressedImageError: not a JPEG/PNG format of that plugin, or an
            encoding the recognizer cannot use.
    """
    text = str(fmt).strip()
    if ";" not in text:
        codec = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}.get(text.lower())
        if codec is None:
            raise CompressedImageError(
                f"unknown format string {text!r}: expected image_transport's compressed formats "
                "('jpeg', 'png' or '<encoding>; jpeg|png compressed <target>'): "
                + _REPUBLISH.format(transport="compressed"))
        return ColourFormat("", codec, "bgr")   # old plugin: BGR or grey, told by the channels
    encoding, rest = (part.strip() for part in text.split(";", 1))
    if _DEPTH_RE.fullmatch(rest):
        raise CompressedImageError(
            f"format {text!r} is a compressedDepth (depth) stream, not colour: point the colour topic at the "
            "camera's colour image")
    m = _COLOUR_RE.fullmatch(rest)
    if m is None:
        raise CompressedImageError(
            f"unknown format string {text!r}: this package reads the compressed transport's jpeg and png "
            f"formats: {_REPUBLISH.format(transport='compressed')}")
    codec, target = m.group(1), m.group(2) or ""
    if encoding not in _COLOUR_ENCODINGS:
        raise CompressedImageError(
            f"format {text!r}: encoding {encoding!r} is not one the recognizer reads ({', '.join(_COLOUR_ENCODINGS)}); "
            "publish 8-bit colour or grey (e.g. debayer with image_proc first)")
    # The publisher converts colour to bgr8 before compressing and says so in the
    # target; without a target the pixels kept the original encoding's order.
    order_of = target or encoding
    order = "mono" if order_of.startswith("mono") else "rgb" if order_of.startswith("rgb") else "bgr"
    return ColourFormat(encoding, codec, order)


def parse_depth_format(fmt: str) -> DepthFormat:
    """Parse a ``compressed_depth_image_transport`` format string (as its ``decodeCompressedDepthImage`` does).

    Raises:
        CompressedImageError: not a compressedDepth format, or an unknown codec or encoding.
    """
    text = str(fmt).strip()
    if ";" in text:
        encoding, rest = (part.strip() for part in text.split(";", 1))
        m = _DEPTH_RE.fullmatch(rest)
        if m is None:
            if _COLOUR_RE.fullmatch(rest):
                raise CompressedImageError(
                    f"format {text!r} is a colour 'compressed' (jpeg/png) stream, not compressedDepth: point the "
                    "depth topic at the registered depth image")
            raise CompressedImageError(
                f"unknown format string {text!r}: expected '<16UC1|32FC1>; compressedDepth <png|rvl>': "
                + _REPUBLISH.format(transport="compressedDepth"))
        codec = m.group(1) or "png"    # the first versions wrote PNG and no codec name
        if codec not in ("png", "rvl"):
            raise CompressedImageError(
                f"format {text!r}: compressedDepth codec {codec!r} is unknown (png and rvl are the plugin's): "
                + _REPUBLISH.format(transport="compressedDepth"))
    else:
        encoding, codec = text, "png"   # the plugin reads a format without ';' as a PNG of that encoding
    if encoding not in _DEPTH_ENCODINGS:
        raise CompressedImageError(
            f"format {text!r}: depth encoding {encoding!r} is not one of {', '.join(_DEPTH_ENCODINGS)}; "
            "the depth topic must carry 16UC1 (mm) or 32FC1 (m) depth registered to the colour image")
    return DepthFormat(encoding, codec)


def as_bytes(data: Any) -> np.ndarray:
    """A message's ``data`` (bytes, rclpy's array.array, a numpy array, a list) as uint8, without a copy
    where possible (the one byte view of raw and compressed decoding)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def _start(buf: np.ndarray) -> str:
    return buf[:8].tobytes().hex(" ") if buf.size else "nothing"


def _check_png(buf: np.ndarray, what: str) -> None:
    if buf[:8].tobytes() != _PNG_MAGIC:
        raise CompressedImageError(f"{what} is not a PNG stream (it starts with {_start(buf)}); the payload is "
                                   "corrupt or the format string is wrong")
    # Every PNG ends with the 12-byte IEND chunk; without it the data were cut short.
    if buf.size < 20 or buf[-8:-4].tobytes() != b"IEND":
        raise CompressedImageError(f"{what} of {buf.size} B ends before the PNG's IEND chunk: the payload is "
                                   "truncated (a recording or transfer cut it short)")


def _check_jpeg(buf: np.ndarray, what: str) -> None:
    if buf[:3].tobytes() != _JPEG_MAGIC:
        raise CompressedImageError(f"{what} is not a JPEG stream (it starts with {_start(buf)}); the payload "
                                   "is corrupt or the format string is wrong")
    # A JPEG ends with the EOI marker (some encoders pad a few zero bytes after it).
    tail = buf[-64:].tobytes().rstrip(b"\x00")
    if not tail.endswith(b"\xff\xd9"):
        raise CompressedImageError(f"{what} of {buf.size} B has no JPEG end marker: the payload is truncated "
                                   "(a recording or transfer cut it short)")


def _imdecode(buf: np.ndarray, what: str) -> np.ndarray:
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        image = None
        detail = f" ({str(exc).strip().splitlines()[-1]})"
    else:
        detail = ""
    if image is None or image.size == 0:
        raise CompressedImageError(f"{what} of {buf.size} B could not be decoded{detail}: the payload is corrupt")
    return image


def decode_colour(fmt: str, data: Any) -> np.ndarray:
    """Decode a ``compressed`` colour message to what the recognizer reads.

    Args:
        fmt: the message's ``format``.
        data: the message's ``data``.

    Returns:
        ``uint8`` ``HxWx3`` BGR, or ``HxW`` grey.

    Raises:
        CompressedImageError: unknown format, truncated or corrupt payload,
            16-bit or otherwise unusable pixels.
    """
    parsed = parse_colour_format(fmt)
    buf = as_bytes(data)
    what = f"{parsed.codec.upper()} payload"
    if buf.size == 0:
        raise CompressedImageError(f"{what} is empty: the publisher sent no image data")
    (_check_jpeg if parsed.codec == "jpeg" else _check_png)(buf, what)
    image = _imdecode(buf, what)
    if image.dtype != np.uint8:
        raise CompressedImageError(f"{what} holds {image.dtype} pixels ({fmt!r}); the recognizer reads 8-bit "
                                   "colour: publish rgb8/bgr8/mono8")
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(image[:, :, 0])
    if channels not in (3, 4):
        raise CompressedImageError(f"{what} has {channels} channels; expected grey, colour or colour + alpha")
    if parsed.order == "rgb":
        return np.ascontiguousarray(image[:, :, 2::-1])
    return np.ascontiguousarray(image[:, :, :3]) if channels == 4 else image


def _decode_depth_png(buf: np.ndarray, fmt: DepthFormat) -> np.ndarray:
    _check_png(buf, "compressedDepth PNG")
    image = _imdecode(buf, "compressedDepth PNG")
    if image.dtype != np.uint16 or image.ndim != 2:
        channels = 1 if image.ndim == 2 else image.shape[2]
        raise CompressedImageError(
            f"the header says {fmt.encoding} but the PNG holds {image.dtype} x {channels} channel(s), not 16-bit "
            "depth: the payload does not match its header")
    return image


def _decode_depth_rvl(buf: np.ndarray) -> np.ndarray:
    if buf.size < 8:
        raise CompressedImageError(f"RVL payload of {buf.size} B is too short for its 8-byte size: truncated")
    cols, rows = struct.unpack_from("<II", buf.tobytes()[:8])
    if cols == 0 or rows == 0 or cols * rows > 1 << 28:
        raise CompressedImageError(f"RVL payload says the image is {cols}x{rows}: the payload is corrupt")
    try:
        pixels = rvl.decode(buf[8:], cols * rows)
    except rvl.RvlError as exc:
        raise CompressedImageError(f"RVL payload ({cols}x{rows}): {exc}") from None
    return pixels.reshape(rows, cols)


def decode_depth(fmt: str, data: Any) -> Tuple[np.ndarray, str]:
    """Decode a ``compressedDepth`` message.

    Args:
        fmt: the message's ``format``.
        data: the message's ``data`` (header + PNG or RVL).

    Returns:
        ``(array, encoding)``: ``uint16`` millimetres for ``16UC1``/``mono16``
        (0 = no reading), ``float32`` metres for ``32FC1`` (NaN = no reading),
        exactly what the plugin's subscriber would put in a ``sensor_msgs/Image``
        of that encoding.

    Raises:
        CompressedImageError: unknown format, a header that does not fit the
            payload, truncated or corrupt data.
    """
    parsed = parse_depth_format(fmt)
    buf = as_bytes(data)
    if buf[:8].tobytes() == _PNG_MAGIC:
        raise CompressedImageError(
            "the payload is a bare PNG without the 12-byte compressedDepth header: it was not written by "
            "compressed_depth_image_transport; decode it as a colour 'compressed' stream or republish it raw")
    if buf.size <= HEADER.size:
        raise CompressedImageError(f"payload of {buf.size} B is too short for the 12-byte compressedDepth header "
                                   "and an image: truncated")
    kind, quant_a, quant_b = HEADER.unpack(buf[: HEADER.size].tobytes())
    if kind != INV_DEPTH:
        raise CompressedImageError(f"the compressedDepth header's format field is {kind}, not {INV_DEPTH} "
                                   "(inverse depth): the header is corrupt or not a compressedDepth header")
    body = buf[HEADER.size:]
    quantised = _decode_depth_png(body, parsed) if parsed.codec == "png" else _decode_depth_rvl(body)
    if parsed.encoding != "32FC1":
        return quantised, parsed.encoding
    if not (np.isfinite(quant_a) and np.isfinite(quant_b) and quant_a > 0 and quant_b < 1):
        raise CompressedImageError(
            f"the 32FC1 header's inverse-depth parameters ({quant_a:g}, {quant_b:g}) cannot decode depth "
            "(expected A > 0 and B < 1): the header does not match the payload")
    depth = np.full(quantised.shape, np.nan, np.float32)
    valid = quantised != 0
    depth[valid] = np.float32(quant_a) / (quantised[valid].astype(np.float32) - np.float32(quant_b))
    return depth, parsed.encoding


# ---------------------------------------------------------------- encoding (as the plugins publish)

def encode_colour(image: np.ndarray, encoding: str, codec: str = "jpeg", jpeg_quality: int = JPEG_QUALITY,
                  png_level: int = PNG_LEVEL) -> Tuple[str, bytes]:
    """``(format, data)`` of the ``compressed`` message the plugin publishes for an image.

    Args:
        image: the raw image's pixels in ``encoding``'s layout (``HxWx3`` for
            ``rgb8``, ``HxW`` for ``mono8``...).
        encoding: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``.
        codec: ``"jpeg"`` or ``"png"``.

    Raises:
        CompressedImageError: unknown encoding or codec, or an array that does not fit.
    """
    arr = np.asarray(image)
    if encoding not in _COLOUR_ENCODINGS or codec not in ("jpeg", "png"):
        raise CompressedImageError(f"cannot encode {encoding!r} as {codec!r}")
    if arr.dtype != np.uint8 or arr.ndim != (2 if encoding == "mono8" else 3):
        raise CompressedImageError(f"array {arr.dtype} {arr.shape} does not fit {encoding}")
    # Colour is converted to bgr8 before compression (cv_bridge::toCvShare(..., "bgr8")).
    if encoding == "mono8":
        pixels, target = arr, ""
    else:
        pixels, target = {"rgb8": arr[:, :, 2::-1], "rgba8": arr[:, :, 2::-1], "bgr8": arr,
                          "bgra8": arr[:, :, :3]}[encoding], "bgr8"
    pixels = np.ascontiguousarray(pixels)
    if codec == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality), cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
                  cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_RST_INTERVAL, 0]
        ok, out = cv2.imencode(".jpg", pixels, params)
    else:
        ok, out = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise CompressedImageError(f"OpenCV could not encode {encoding} as {codec}")
    return f"{encoding}; {codec} compressed {target}", out.tobytes()


def quantisation(depth_max: float = DEPTH_MAX_M, depth_quantization: float = DEPTH_QUANTIZATION
                 ) -> Tuple[float, float]:
    """The plugin's inverse-depth parameters ``(A, B)`` in float32, as it stores them in the header."""
    z0, dmax = np.float32(depth_quantization), np.float32(depth_max)
    quant_a = np.float32(z0 * (z0 + np.float32(1.0)))
    return float(quant_a), float(np.float32(np.float32(1.0) - quant_a / dmax))


def encode_depth(depth: np.ndarray, encoding: str = "16UC1", codec: str = "png", depth_max: float = DEPTH_MAX_M,
                 depth_quantization: float = DEPTH_QUANTIZATION, png_level: int = PNG_LEVEL) -> Tuple[str, bytes]:
    """``(format, data)`` of the ``compressedDepth`` message the plugin publishes for a depth image.

    Args:
        depth: ``uint16`` millimetres (``16UC1``/``mono16``) or ``float32``
            metres (``32FC1``; 0, NaN and values from ``depth_max`` on are
            stored as "no reading").
        codec: ``"png"`` (the plugin's default) or ``"rvl"``.

    Raises:
        CompressedImageError: unknown encoding or codec, or an array that does not fit.
    """
    arr = np.asarray(depth)
    if encoding not in _DEPTH_ENCODINGS or codec not in ("png", "rvl") or arr.ndim != 2:
        raise CompressedImageError(f"cannot encode {arr.dtype} {arr.shape} as {encoding!r} {codec!r}")
    if encoding == "32FC1":
        quant_a, quant_b = quantisation(depth_max, depth_quantization)
        d = arr.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.float32(quant_a) / d + np.float32(quant_b)
        # The C++ cast truncates toward zero; 0, NaN, beyond depth_max and
        # values too near to fit 16 bits all become 0 = no reading.
        keep = np.isfinite(q) & (d > 0) & (d < np.float32(depth_max)) & (q >= 1) & (q < 65536)
        pixels = np.where(keep, q, 0).astype(np.uint16)
        header = HEADER.pack(INV_DEPTH, quant_a, quant_b)
    else:
        if arr.dtype != np.uint16:
            raise CompressedImageError(f"{encoding} depth must be uint16 millimetres, got {arr.dtype}")
        pixels = arr.copy()
        pixels[pixels > int(np.float32(depth_max) * np.float32(1000.0))] = 0   # the plugin's max-depth filter
        header = HEADER.pack(INV_DEPTH, 0.0, 0.0)
    if codec == "png":
        ok, out = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
        if not ok:
            raise CompressedImageError("OpenCV could not encode the depth as PNG")
        body = out.tobytes()
    else:
        rows, cols = pixels.shape
        body = struct.pack("<II", cols, rows) + rvl.encode(pixels)
    return f"{encoding}; compressedDepth {codec}", header + body
