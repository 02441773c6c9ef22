"""Models: torchvision-exact EfficientNet-B3 / EfficientNetV2-S on the C core."""

from .efficientnet import ARCHS, EfficientNet, efficientnet_b3, efficientnet_v2_s
from .pretrained import PretrainedWeightsError, WeightsUnavailableError, imagenet_weights

__all__ = [
    "ARCHS",
    "EfficientNet",
    "PretrainedWeightsError",
    "WeightsUnavailableError",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "imagenet_weights",
]
