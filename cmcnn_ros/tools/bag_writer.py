"""Writing labelled Kinect-style RGB-D frames into a rosbag2 (:class:`RgbdBagWriter`).

CM-CNN (Ni et al., IEEE TCDS 2023) classifies the face crops of one colour
frame and its registered depth (Section III-B); the bag tools test the node
and the offline evaluator on *sequences* of such frames. This module is the
writing half of the bag I/O (:mod:`cmcnn_ros.tools.bag_io` reads): it needs
only ``rosbags``. The labelled synthetic sequences of ``cmcnn-bag-write``
(scripted subjects rendered with the ICT-FaceKit renderer) are planned and
rendered offline by :mod:`cmcnn_synthetic.scenarios`, which writes them with
this class.

Bag layout (rosbag2, **MCAP** storage, metadata version 9: the default
storage since ROS 2 Iron; ``ros2 bag play`` on Jazzy/Kilted and ``rosbags``
read it; ``storage="sqlite3"`` writes the older format):

========================================  ===========================  =====================================
topic                                     type                         content
========================================  ===========================  =====================================
``/camera/color/image_raw``               sensor_msgs/msg/Image        ``rgb8`` 640x480 colour
``/camera/depth_registered/image_raw``    sensor_msgs/msg/Image        ``16UC1`` depth in mm registered to
                                                                       colour (0 = no reading)
``/camera/color/camera_info``             sensor_msgs/msg/CameraInfo   pinhole intrinsics (plumb_bob, no
                                                                       distortion)
``/cmcnn/ground_truth``                   std_msgs/msg/String          JSON per frame: boxes, labels,
                                                                       subject ids, intensities, eyes
========================================  ===========================  =====================================

All four messages of a frame carry the same stamp (header stamp and bag
log time), frame id ``camera_color_optical_frame``; the colour and depth
topic names are the ``fer_node`` defaults, so replaying the bag into the node
needs no remapping.

With ``colour_transport="compressed"`` / ``depth_transport="compressedDepth"``
the images are written the way a robot records them through
``image_transport`` instead: ``sensor_msgs/msg/CompressedImage`` on
``/camera/color/image_raw/compressed`` (format ``"rgb8; jpeg compressed
bgr8"``, or PNG) and ``/camera/depth_registered/image_raw/compressedDepth``
(``"16UC1; compressedDepth png"`` or ``rvl``), encoded as the plugins encode
them (:mod:`cmcnn_ros.ros.compressed`); no raw image topic is written then.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

# The package's one pinhole model (face positions use it too); cmcnn_synthetic imports it from here.
from cmcnn_ros.inference.face_pose import CameraIntrinsics
from cmcnn_ros.ros import compressed
from cmcnn_ros.tools.bag_io import (CAMERA_FRAME_ID, CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, COLOUR_TOPIC, DEPTH_TOPIC,
                                    IMAGE_TYPE, LABELS_TOPIC, STRING_TYPE, FrameLabels)

STORAGES = ("mcap", "sqlite3")
COMPRESSED_IMAGE_TYPE = compressed.COMPRESSED_IMAGE_TYPE
COLOUR_ENCODING = "rgb8"  # Kinect v1 drivers (openni) publish rgb8
DEPTH_ENCODING = "16UC1"


class BagWriteError(ValueError):
    """Bad writer options or frames (sizes, dtypes, existing output)."""


@dataclass(frozen=True)
class Transports:
    """How the images are written: raw, or as image_transport's compressed transports.

    Attributes:
        colour: ``"raw"`` or ``"compressed"``.
        depth: ``"raw"`` or ``"compressedDepth"``.
        colour_codec: ``"jpeg"`` or ``"png"`` (compressed colour).
        jpeg_quality: 1-100 (the plugin's default is 95).
        depth_codec: ``"png"`` or ``"rvl"`` (compressedDepth).
    """

    colour: str = "raw"
    depth: str = "raw"
    colour_codec: str = "jpeg"
    jpeg_quality: int = compressed.JPEG_QUALITY
    depth_codec: str = "png"

    def validate(self) -> None:
        """Raises:
            BagWriteError: an unknown transport or codec, or a quality outside 1-100.
        """
        if self.colour not in compressed.COLOUR_TRANSPORTS:
            raise BagWriteError(f"colour transport must be one of {compressed.COLOUR_TRANSPORTS}, got {self.colour!r}")
        if self.depth not in compressed.DEPTH_TRANSPORTS:
            raise BagWriteError(f"depth transport must be one of {compressed.DEPTH_TRANSPORTS}, got {self.depth!r}")
        if self.colour_codec not in ("jpeg", "png") or self.depth_codec not in ("png", "rvl"):
            raise BagWriteError(f"codecs: colour jpeg|png, depth png|rvl; got {self.colour_codec!r}, "
                                f"{self.depth_codec!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise BagWriteError(f"JPEG quality must be in 1-100, got {self.jpeg_quality}")


class RgbdBagWriter:
    """Writes colour/depth/camera-info/ground-truth frames into a rosbag2 with ``rosbags``.

    Args:
        path: output bag folder (must not exist unless ``overwrite``).
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        overwrite: replace an existing folder.
        transports: raw images (default) or image_transport's compressed topics.

    Raises:
        BagWriteError: the output exists (without ``overwrite``), the storage or a transport is unknown.
    """

    def __init__(self, path: "str | Path", storage: str = "mcap", overwrite: bool = False,
                 transports: Transports = Transports()) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise BagWriteError(f"storage must be one of {STORAGES}, got {storage!r}")
        transports.validate()
        self.transports = transports
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists():
            if not overwrite:
                raise BagWriteError(f"{self.path} exists; pass --overwrite to replace it")
            if not (self.path / "metadata.yaml").exists():
                raise BagWriteError(f"{self.path} exists and is not a bag; refusing to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary folder and moved into place on close, so a
        # crash never leaves a half-written bag under the final name.
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._ts = get_typestore(Stores.ROS2_KILTED)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmpdir / self.path.name, version=9, storage_plugin=plugin)
        self._writer.open()
        image_type = {"raw": IMAGE_TYPE}
        self._conns = {
            "colour": self._writer.add_connection(compressed.transport_topic(COLOUR_TOPIC, transports.colour),
                                                  image_type.get(transports.colour, COMPRESSED_IMAGE_TYPE),
                                                  typestore=self._ts),
            "depth": self._writer.add_connection(compressed.transport_topic(DEPTH_TOPIC, transports.depth),
                                                 image_type.get(transports.depth, COMPRESSED_IMAGE_TYPE),
                                                 typestore=self._ts),
            "info": self._writer.add_connection(CAMERA_INFO_TOPIC, CAMERA_INFO_TYPE, typestore=self._ts),
            "labels": self._writer.add_connection(LABELS_TOPIC, STRING_TYPE, typestore=self._ts),
        }
        self.frames = 0
        self._closed = False

    def __enter__(self) -> "RgbdBagWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def _header(self, stamp_ns: int) -> Any:
        t = self._ts.types
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                        frame_id=CAMERA_FRAME_ID)

    def _image(self, stamp_ns: int, array: np.ndarray, encoding: str) -> bytes:
        from cmcnn_ros.ros.conversions import array_to_image_fields

        fields = array_to_image_fields(array, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        msg = self._ts.types[IMAGE_TYPE](header=self._header(stamp_ns), **fields)
        return self._ts.serialize_cdr(msg, IMAGE_TYPE)

    def _compressed(self, stamp_ns: int, fmt: str, data: bytes) -> bytes:
        msg = self._ts.types[COMPRESSED_IMAGE_TYPE](header=self._header(stamp_ns), format=fmt,
                                                    data=np.frombuffer(data, dtype=np.uint8))
        return self._ts.serialize_cdr(msg, COMPRESSED_IMAGE_TYPE)

    def _colour(self, stamp_ns: int, rgb: np.ndarray) -> bytes:
        t = self.transports
        if t.colour == "raw":
            return self._image(stamp_ns, rgb, COLOUR_ENCODING)
        # What a driver publishing rgb8 through image_transport records.
        return self._compressed(stamp_ns, *compressed.encode_colour(rgb, COLOUR_ENCODING, t.colour_codec,
                                                                    t.jpeg_quality))

    def _depth(self, stamp_ns: int, depth_mm: np.ndarray) -> bytes:
        if self.transports.depth == "raw":
            return self._image(stamp_ns, depth_mm, DEPTH_ENCODING)
        return self._compressed(stamp_ns, *compressed.encode_depth(depth_mm, DEPTH_ENCODING,
                                                                   self.transports.depth_codec))

    def _camera_info(self, stamp_ns: int, k: CameraIntrinsics) -> bytes:
        t = self._ts.types
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = t[CAMERA_INFO_TYPE](
            header=self._header(stamp_ns), height=k.height, width=k.width, distortion_model="plumb_bob",
            d=np.zeros(5, np.float64),
            k=np.array([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1], np.float64),
            r=np.eye(3, dtype=np.float64).reshape(-1),
            p=np.array([k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1, 0], np.float64),
            binning_x=0, binning_y=0, roi=roi)
        return self._ts.serialize_cdr(msg, CAMERA_INFO_TYPE)

    def write_frame(self, stamp_ns: int, colour_bgr: np.ndarray, depth_mm: np.ndarray, labels: FrameLabels,
                    intrinsics: Optional[CameraIntrinsics] = None) -> None:
        """Write one frame: colour, depth, camera info (optional) and ground truth, all at ``stamp_ns``.

        Args:
            stamp_ns: header stamp and log time (ns).
            colour_bgr: ``uint8 HxWx3`` BGR (stored as ``rgb8``).
            depth_mm: ``uint16 HxW`` millimetres, registered to colour (0 = hole).
            labels: the frame's ground truth; its ``stamp_ns`` must equal ``stamp_ns``.
            intrinsics: camera model; no CameraInfo message when None.

        Raises:
            BagWriteError: wrong dtype/shape, sizes differ, or label stamp mismatch.
        """
        c, d = np.asarray(colour_bgr), np.asarray(depth_mm)
        if c.dtype != np.uint8 or c.ndim != 3 or c.shape[2] != 3:
            raise BagWriteError(f"colour must be uint8 HxWx3 BGR, got {c.dtype} {c.shape}")
        if d.dtype != np.uint16 or d.ndim != 2:
            raise BagWriteError(f"depth must be uint16 HxW millimetres, got {d.dtype} {d.shape}")
        if d.shape != c.shape[:2]:
            raise BagWriteError(f"depth {d.shape} is not registered to colour {c.shape[:2]}")
        if labels.stamp_ns != stamp_ns:
            raise BagWriteError(f"labels stamp {labels.stamp_ns} != frame stamp {stamp_ns}")
        w = self._writer
        w.write(self._conns["colour"], stamp_ns, self._colour(stamp_ns, c[:, :, ::-1]))
        w.write(self._conns["depth"], stamp_ns, self._depth(stamp_ns, d))
        if intrinsics is not None:
            w.write(self._conns["info"], stamp_ns, self._camera_info(stamp_ns, intrinsics))
        w.write(self._conns["labels"], stamp_ns,
                self._ts.serialize_cdr(self._ts.types[STRING_TYPE](data=labels.to_json()), STRING_TYPE))
        self.frames += 1

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml) and move it to :attr:`path`."""
        if self._closed:
            return
        self._writer.close()
        self._closed = True
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self._tmpdir / self.path.name, self.path)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def abort(self) -> None:
        """Stop writing and delete the partial bag."""
        if not self._closed:
            try:
                self._writer.close()
            finally:
                self._closed = True
        shutil.rmtree(self._tmpdir, ignore_errors=True)
