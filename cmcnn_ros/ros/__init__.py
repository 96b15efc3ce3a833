"""ROS 2 side of cmcnn_ros: the ``fer_node`` managed node, image message
conversion and colour/depth synchronisation (the only modules importing rclpy).

The node runs the CM-CNN recogniser (Ni et al., IEEE TCDS 2023) on Kinect-style
RGB-D streams; see ``fer_node`` for topics and parameters.
"""
