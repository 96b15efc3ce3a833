"""Examples of consuming ``fer_node``'s output, meant to be copied and adapted.

* :mod:`cmcnn_ros.examples.emotion_tree` - a py_trees behaviour tree over the
  node's ``cmcnn_ros/EmotionArray`` (ROS-free: behaviours, blackboard state,
  message validation);
* :mod:`cmcnn_ros.examples.emotion_tree_node` - the rclpy node that runs it
  (console entry point ``cmcnn-emotion-tree``; README "Behaviour-tree
  example").
"""
