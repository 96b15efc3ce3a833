"""Launch cmcnn_ros fer_node (CM-CNN, Ni et al., IEEE TCDS 2023) as a managed node.

Standard launch_ros lifecycle pattern: start the LifecycleNode with
autostart false, emit the 'configure' transition, and emit 'activate' once
the node reaches 'inactive'. If configure fails (bad model_path, device...),
the node logs what to fix and stays 'unconfigured'.

    ros2 launch cmcnn_ros fer.launch.py model_path:=/path/to/model.pt \
        colour_topic:=/rgb/image_raw depth_topic:=/depth_to_rgb/image_raw
    ros2 launch cmcnn_ros fer.launch.py colour_transport:=compressed depth_transport:=compressedDepth
    ros2 launch cmcnn_ros fer.launch.py face_source:=ros4hri   # behind hri_face_detect: its face ids
    ros2 launch cmcnn_ros fer.launch.py camera_info_topic:=/camera/color/camera_info   # face_<id> TF frames
"""

import os

import launch
import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory("cmcnn_ros")
    args = [
        DeclareLaunchArgument("model_path", default_value=os.path.join(share, "models", "cmcnn_default.pt"),
                              description="CM-CNN checkpoint (.pt)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("inference_backend", default_value="auto",
                              description="auto, torch or onnxruntime (what runs the network)"),
        DeclareLaunchArgument("colour_topic", default_value="/camera/color/image_raw",
                              description="colour image topic"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/depth_registered/image_raw",
                              description="depth registered to colour ('' = colour only)"),
        DeclareLaunchArgument("camera_info_topic", default_value="",
                              description="the colour camera's CameraInfo: face positions and REP-155 face_<id> "
                                          "TF frames ('' = none)"),
        DeclareLaunchArgument("colour_transport", default_value="raw",
                              description="raw or compressed (reads colour_topic/compressed)"),
        DeclareLaunchArgument("depth_transport", default_value="raw",
                              description="raw or compressedDepth (reads depth_topic/compressedDepth)"),
        DeclareLaunchArgument("face_source", default_value="own",
                              description="own (detect and track faces) or ros4hri (the faces and ids of "
                                          "/humans/faces/tracked, e.g. from hri_face_detect)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "fer.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
    ]
    node = LifecycleNode(
        package="cmcnn_ros",
        executable="fer_node",
        name="fer_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_path": LaunchConfiguration("model_path"),
                "device": LaunchConfiguration("device"),
                "inference_backend": LaunchConfiguration("inference_backend"),
                "colour_topic": LaunchConfiguration("colour_topic"),
                "depth_topic": LaunchConfiguration("depth_topic"),
                "camera_info_topic": LaunchConfiguration("camera_info_topic"),
                "colour_transport": LaunchConfiguration("colour_transport"),
                "depth_transport": LaunchConfiguration("depth_transport"),
                "face_source": LaunchConfiguration("face_source"),
                # a launch argument is a string; the parameter is a bool
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                "autostart": False,
            },
        ],
    )
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(node),
        transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    return launch.LaunchDescription(args + [node, activate_when_inactive, configure])
