"""Models: torchvision-exact EfficientNet-B3 / EfficientNetV2-S on the C core."""

from .efficientnet import ARCHS, EfficientNet, efficientnet_b3, efficientnet_v2_s

__all__ = ["ARCHS", "EfficientNet", "efficientnet_b3", "efficientnet_v2_s"]
