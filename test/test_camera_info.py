"""The node's CameraInfo handling without ROS (cmcnn_ros/ros/camera_info.py): which CameraInfo an image
takes and what makes one unusable, on rosbags' sensor_msgs/CameraInfo (the Kilted definition)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from cmcnn_ros.inference.face_pose import IntrinsicsError
from cmcnn_ros.ros.camera_info import CameraInfoBuffer, image_intrinsics

TS = get_typestore(Stores.ROS2_KILTED)
CameraInfo = TS.types["sensor_msgs/msg/CameraInfo"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
RegionOfInterest = TS.types["sensor_msgs/msg/RegionOfInterest"]


def info(stamp_ns: int = 1, fx: float = 525.0, fy: float = 525.0, width: int = 640, height: int = 480,
         frame_id: str = "camera_color_optical_frame"):
    return CameraInfo(header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id),
                      height=height, width=width, distortion_model="plumb_bob", d=np.zeros(5),
                      k=np.array([fx, 0, 319.5, 0, fy, 239.5, 0, 0, 1], float), r=np.eye(3).ravel(),
                      p=np.zeros(12), binning_x=0, binning_y=0,
                      roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def test_an_image_takes_the_camera_info_of_its_stamp_else_the_newest():
    buf = CameraInfoBuffer(keep=3)
    assert buf.for_image(5) is None                       # nothing received yet
    for ns, fx in ((10, 500.0), (20, 510.0), (30, 520.0)):
        buf.add(info(ns, fx=fx))
    assert buf.for_image(20).k[0] == 510.0                # its own
    assert buf.for_image(25).k[0] == 520.0                # none of its stamp: the newest (same calibration)
    buf.add(info(40, fx=530.0))
    assert buf.for_image(10).k[0] == 530.0 and buf.received == 4   # 10 fell out of the buffer
    buf.clear()
    assert buf.for_image(40) is None and buf.received == 0
    with pytest.raises(ValueError):
        CameraInfoBuffer(keep=0)


def test_usable_camera_info_gives_the_intrinsics():
    got = image_intrinsics(info(fx=525.0, fy=526.0), (480, 640, 3), "camera_color_optical_frame")
    assert (got.fx, got.fy, got.cx, got.cy, got.width, got.height) == (525.0, 526.0, 319.5, 239.5, 640, 480)
    assert image_intrinsics(info(frame_id=""), (480, 640), "camera_color_optical_frame").fx == 525.0


@pytest.mark.parametrize("msg, problem", [
    (info(fx=0.0, fy=0.0), "focal length fx is 0.0"),                 # an uncalibrated driver
    (info(fy=math.nan), "focal length fy is nan"),
    (info(width=1280, height=720), "for a 1280x720 image but the colour image is 640x480"),
    (info(frame_id="camera_depth_optical_frame"), "for frame 'camera_depth_optical_frame' but the colour image"),
])
def test_unusable_camera_info_names_its_problem(msg, problem):
    with pytest.raises(IntrinsicsError, match=problem):
        image_intrinsics(msg, (480, 640, 3), "camera_color_optical_frame")
