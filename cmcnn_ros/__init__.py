"""cmcnn_ros: RGB-D facial expression recognition with CM-CNN for ROS 2.

CM-CNN is the cross-modality attention network of Ni et al., "Facial
Expression Recognition Through Cross-Modality Attention Fusion", IEEE TCDS
2023. Everything outside ``cmcnn_ros.ros`` (and the example's node) is
ROS-free and importable without rclpy; docs/ARCHITECTURE.md draws the layers.
The offline trainer (``cmcnn_training``) and renderer (``cmcnn_synthetic``)
import this package; it never imports them.
"""

__version__ = "0.1.0"

# The generated ROS message module is also named cmcnn_ros; on the pip/venv
# path it lives in another folder (.ros_prefix/install/...). extend_path adds
# every cmcnn_ros folder on sys.path, so cmcnn_ros.msg resolves there.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
