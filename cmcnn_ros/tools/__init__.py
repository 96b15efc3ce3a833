"""Console tools: recognition CLI, rosbag writer / evaluator / replayer, and the demo."""
