"""Models: the ResNet backbone, visual words, HSPP and the CAM classifier."""
from vwe.models.classifier import VARIANTS, Classifier, ClassifierOutput, Variant, build_classifier, get_variant
from vwe.models.hspp import gap, hspp
from vwe.models.resnet import BACKBONES, FrozenBatchNorm2d, ResNetBackbone, build_backbone
from vwe.models.visual_words import VisualWords, VisualWordsOutput
from vwe.models.weights import load_backbone

__all__ = [
    "BACKBONES",
    "VARIANTS",
    "Classifier",
    "ClassifierOutput",
    "FrozenBatchNorm2d",
    "ResNetBackbone",
    "Variant",
    "VisualWords",
    "VisualWordsOutput",
    "build_backbone",
    "build_classifier",
    "gap",
    "get_variant",
    "hspp",
    "load_backbone",
]
