"""pip packaging of cmcnn_ros for machines without a ROS 2 install.

Installs three Python packages and the console entry points of
docs/ARCHITECTURE.md:

* ``cmcnn_ros`` (from ``cmcnn_ros/``): the runtime, the ROS-free core plus the
  rclpy node and its tools; what a robot runs;
* ``cmcnn_training`` (from ``training/cmcnn_training/``): the offline trainer;
* ``cmcnn_synthetic`` (from ``synthetic/cmcnn_synthetic/``): the offline
  ICT-FaceKit renderer, synthetic benchmark and synthetic bags.

The offline packages import ``cmcnn_ros``, never the other way round. Their
extra dependencies are the extras below (``pip install -e '.[synthetic,training]'``).
``scripts/setup.sh`` runs ``pip install --no-deps -e .`` after installing the
pinned requirements.txt, which holds everything.

On a robot the runtime is installed by colcon through CMakeLists.txt
(ament_cmake): ``RUNTIME_ENTRY_POINTS`` only, unless the offline packages are
asked for (``-DCMCNN_INSTALL_OFFLINE=ON``); keep both lists there in sync
(a test checks it). Nothing is installed under a generic top-level name such
as ``training`` or ``synthetic``.
"""

from setuptools import find_packages, setup

# The node and its tools (cmcnn_ros): what colcon installs on a robot.
RUNTIME_ENTRY_POINTS = [
    "fer_node = cmcnn_ros.ros.fer_node:main",
    "cmcnn-recognize = cmcnn_ros.tools.recognize_cli:main",
    "cmcnn-bag-evaluate = cmcnn_ros.tools.bag_evaluate:main",
    "cmcnn-bag-replay = cmcnn_ros.tools.bag_replay:main",
    "cmcnn-explain = cmcnn_ros.tools.explain_cli:main",
    "cmcnn-emotion-tree = cmcnn_ros.examples.emotion_tree_node:main",
]
# Offline work (cmcnn_synthetic, cmcnn_training).
OFFLINE_ENTRY_POINTS = [
    "cmcnn-synth = cmcnn_synthetic.generate:main",
    "cmcnn-bag-write = cmcnn_synthetic.bags:main",
    "cmcnn-demo = cmcnn_synthetic.demo:main",
    "cmcnn-train = cmcnn_training.train:main",
    "cmcnn-evaluate = cmcnn_training.evaluate:main",
    "cmcnn-calibrate = cmcnn_training.calibrate:main",
    "cmcnn-reproduce = cmcnn_training.reproduce.cli:main",
]

PACKAGE_DIRS = {
    "cmcnn_ros": "cmcnn_ros",
    "cmcnn_training": "training/cmcnn_training",
    "cmcnn_synthetic": "synthetic/cmcnn_synthetic",
}
# Top-level packages are named explicitly so the editable install maps each
# to its folder; subpackages are listed for non-editable installs (wheels).
PACKAGES = sorted(
    set(PACKAGE_DIRS)
    | set(find_packages(include=["cmcnn_ros.*"]))
    | set(find_packages(where="training", include=["cmcnn_training.*"]))
    | set(find_packages(where="synthetic", include=["cmcnn_synthetic.*"]))
)

# Loose bounds only; the tested pins are in requirements.txt.
EXTRAS_REQUIRE = {
    # rosbag2 files without a ROS install: cmcnn_ros.tools (bag_io, bag_writer,
    # bag_replay, bag_evaluate, the demo).
    "bags": ["rosbags>=0.11,<1"],
    # cmcnn_synthetic. pyrender brings trimesh and PyOpenGL, but pins PyOpenGL
    # 3.1.0, whose OSMesa binding is broken: headless rendering needs
    # PyOpenGL>=3.1.7 installed after it with --no-deps
    # (requirements-overrides.txt) and Debian's libosmesa6.
    "synthetic": ["pyrender>=0.1.45,<0.2", "rosbags>=0.11,<1"],
    # cmcnn_training (torch left out as in install_requires); scikit-learn and
    # threadpoolctl for the cmcnn-reproduce report.
    "training": ["scikit-learn>=1.3", "threadpoolctl>=3.1"],
    # cmcnn_ros/examples (the behaviour tree).
    "examples": ["py_trees>=2.2"],
}

setup(
    name="cmcnn_ros",
    version="0.1.0",
    description=(
        "RGB-D facial expression recognition for ROS 2 with CM-CNN "
        "(Ni et al., IEEE TCDS 2023)"
    ),
    license="MIT",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={name: rel for name, rel in PACKAGE_DIRS.items() if name != "cmcnn_ros"},
    package_data={
        # the ICT-FaceKit model with its licence and README, kept together
        "cmcnn_synthetic": ["data/*"],
        "cmcnn_training": ["configs/*"],
    },
    # Loose bounds only: the tested pins live in requirements.txt (installed
    # first by scripts/setup.sh, which then installs this with --no-deps).
    # torch and the ROS 2 wheels are left out on purpose: an unpinned torch
    # pulls a multi-GB CUDA build, and on a robot ROS provides rclpy.
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.5,<5",
        "scipy>=1.10",
        "scikit-image>=0.21",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        # 3.6: Ubuntu 24.04 (ROS 2 Jazzy) ships 3.6.3, and `make test-distro`
        # passes with it; a higher bound would make pip replace it on a robot.
        "matplotlib>=3.6",
        "ai-edge-litert>=2.3",
        # the default inference backend and torch's ONNX exporter (inference/backends.py)
        "onnxruntime>=1.20",
        "onnx>=1.17",
        "onnxscript>=0.5",
    ],
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": RUNTIME_ENTRY_POINTS + OFFLINE_ENTRY_POINTS},
    zip_safe=False,
)
