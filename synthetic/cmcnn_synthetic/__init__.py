"""Synthetic RGB-D facial expression benchmark from the ICT-FaceKit model.

Stands in for the licensed databases of the paper's Section IV-A (BU-3DFE,
Bosphorus, VT-KFER, CCZU-FER): Kinect-like colour + registered depth frames
of seeded subjects posing neutral and the six basic expressions at four
intensities. See ``docs/SYNTHETIC.md``.

An offline package beside the runtime ``cmcnn_ros`` (which it uses and which
never imports it): the renderer (``render``, ``scene``: pyrender on OSMesa)
and the ICT-FaceKit model (``facekit``, ``data/``), the benchmark writer
``generate`` (``cmcnn-synth``), scripted multi-face sequences (``scenarios``)
rendered into labelled rosbag2 files (``bags``, ``cmcnn-bag-write``), and the
demo's bag writer (``demo``, ``cmcnn-demo``). Install with
``pip install -e '.[synthetic]'``.

Typical use::

    from cmcnn_synthetic import FaceSpec, render_frame
    frame = render_frame([FaceSpec(subject_id=3, label="happy", intensity=4,
                                   position_m=(0.0, 0.0, 1.0))], seed=7)
    frame.colour, frame.depth_mm, frame.faces[0].box
"""

from .expressions import (INTENSITY_LEVELS, INTENSITY_SCALES, RECIPES, VARIATIONS, ExpressionError,
                          expression_weights)
from .facekit import FaceKitError, FaceKitModel, identity_coefficients, identity_mesh, load_facekit
from .render import DEPTH_NOISE_MODELS, BackgroundSpec, CameraSpec, LightSpec, RenderError, SensorSpec
from .scene import (FaceSpec, FaceTruth, PoseRange, RenderedFrame, SceneError, face_box, kinect_depth,
                    random_background, random_face_spec, random_light, random_sensor, render_frame)

__all__ = [
    "BackgroundSpec", "CameraSpec", "DEPTH_NOISE_MODELS", "ExpressionError", "FaceKitError", "FaceKitModel",
    "FaceSpec", "FaceTruth", "INTENSITY_LEVELS", "INTENSITY_SCALES", "LightSpec", "PoseRange", "RECIPES",
    "RenderError", "RenderedFrame", "SceneError", "SensorSpec", "VARIATIONS", "expression_weights", "face_box",
    "identity_coefficients", "identity_mesh", "kinect_depth", "load_facekit", "random_background",
    "random_face_spec", "random_light", "random_sensor", "render_frame",
]
