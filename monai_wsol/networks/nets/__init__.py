"""Classifiers that localize: CAM in the graph, plug-ins at named positions, plain checkpoints still load;
the floor and ceiling nets (:mod:`monai_wsol.networks.nets.bounds`)."""

from monai_wsol.networks.nets.acol import ACoLClassifier, acol_loss
from monai_wsol.networks.nets.bounds import (
    SEGMENTERS,
    DiceBCELoss,
    MaskPrior,
    SegmentationLocalizer,
    build_segmenter,
)
from monai_wsol.networks.nets.cam_classifier import CAMClassifier, ClassIndex, resolve_class_idx
from monai_wsol.networks.nets.densenet import DENSENET_PRESETS, CAMDenseNet121
from monai_wsol.networks.nets.insertion import insert_after, load_plain_state_dict, resolve_positions
from monai_wsol.networks.nets.plain_cnn import POOLINGS, CAMPlainCNN
from monai_wsol.networks.nets.vgg import CAMVGG16, VGG16_POSITIONS, VGG16_PRESETS

__all__ = [
    "ACoLClassifier",
    "acol_loss",
    "DENSENET_PRESETS",
    "VGG16_POSITIONS",
    "VGG16_PRESETS",
    "SEGMENTERS",
    "DiceBCELoss",
    "MaskPrior",
    "SegmentationLocalizer",
    "build_segmenter",
    "CAMClassifier",
    "CAMDenseNet121",
    "CAMPlainCNN",
    "POOLINGS",
    "CAMVGG16",
    "ClassIndex",
    "insert_after",
    "load_plain_state_dict",
    "resolve_class_idx",
    "resolve_positions",
]
