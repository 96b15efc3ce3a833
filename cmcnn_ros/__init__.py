"""cmcnn_ros: RGB-D facial expression recognition with CM-CNN for ROS 2.

CM-CNN is the cross-modality attention network of Ni et al., "Facial
Expression Recognition Through Cross-Modality Attention Fusion", IEEE TCDS
2023. Everything below ``cmcnn_ros.ros`` is ROS-free and importable without
rclpy.
"""

__version__ = "0.1.0"
