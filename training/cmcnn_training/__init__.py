"""cmcnn_training: offline training and evaluation of CM-CNN (Ni et al., IEEE TCDS 2023).

Dataset loaders and evaluation protocols live in
:mod:`cmcnn_training.datasets` (Section IV-A); ``cmcnn-train`` /
``cmcnn-evaluate`` are in :mod:`cmcnn_training.train` and
:mod:`cmcnn_training.evaluate`. Nothing here is imported by the ROS node.
"""

__all__ = ["datasets"]
