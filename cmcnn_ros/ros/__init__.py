"""ROS 2 side of cmcnn_ros: the ``fer_node`` managed node and the ROS conventions it follows.

Two kinds of module live here. Those that import rclpy make up the node:
``fer_node`` (lifecycle, worker, publishing), ``parameters`` (declared once,
with ranges), ``inputs`` (colour/depth subscriptions and pairing),
``messages`` (stream results -> ``EmotionArray``, debug image), ``hri``
(ROS4HRI output) and ``hri_input`` (a ROS4HRI detector's faces, for
``face_source: ros4hri``). The others are ROS-free implementations of ROS rules, so the
bag tools and tests use them without a ROS install: ``sync``
(message_filters' pairing, a detector's list with its image, the latest-slot
hand-off, stamps), ``params_file``
(rcl's params-file and node-key rules), ``conversions`` (``sensor_msgs/Image``
encodings <-> NumPy) and ``diagnostics`` (the counters behind
``/diagnostics``, the log throttle).

The node runs the CM-CNN recogniser (Ni et al., IEEE TCDS 2023) on Kinect-style
RGB-D streams through :class:`cmcnn_ros.inference.stream.ExpressionStream`;
see ``fer_node`` for topics and parameters.
"""
