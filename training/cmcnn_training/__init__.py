"""cmcnn_training: offline training and evaluation of CM-CNN (Ni et al., IEEE TCDS 2023).

Dataset loaders, evaluation protocols and the sample/fold selection of a run
live in :mod:`cmcnn_training.datasets` (Section IV-A). Laid out like
torchvision's ``references/classification``: the entry points
``cmcnn-train`` (:mod:`~cmcnn_training.train`), ``cmcnn-evaluate``
(:mod:`~cmcnn_training.evaluate`) and ``cmcnn-reproduce``
(:mod:`~cmcnn_training.reproduce`) share :mod:`~cmcnn_training.utils`,
:mod:`~cmcnn_training.builders` and :mod:`~cmcnn_training.fitting`, and never
import each other. Nothing here is imported by the ROS node.
"""

__all__ = ["datasets"]
