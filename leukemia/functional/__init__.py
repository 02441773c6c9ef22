"""Layer-level NumPy API of the C core (NCHW float32 in and out).

Each function plans the layer for the given shapes, runs it in C with the GIL
released and returns new arrays. It exists for testing and experiments; the
models in `leukemia.models` run whole networks without these round trips.
"""

from .activation import (
    activation_backward,
    activation_forward,
    relu6_forward,
    relu_forward,
    sigmoid_forward,
    silu_forward,
)
from .attention_ops import (
    channel_stats_backward,
    channel_stats_forward,
    spatial_mul_backward,
    spatial_mul_forward,
    spatial_softmax_backward,
    spatial_softmax_forward,
    weighted_sum_backward,
    weighted_sum_forward,
)
from .batchnorm import batch_norm_backward, batch_norm_forward
from .conv import conv2d_backward, conv2d_forward, conv_padding
from .dropout import (
    dropout_backward,
    dropout_forward,
    stochastic_depth_backward,
    stochastic_depth_forward,
)
from .elementwise import add_forward, channel_mul_backward, channel_mul_forward
from .linear import linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .pooling import (
    global_avg_pool_backward,
    global_avg_pool_forward,
    global_max_pool_backward,
    global_max_pool_forward,
)

__all__ = [
    "silu_forward",
    "sigmoid_forward",
    "relu_forward",
    "relu6_forward",
    "activation_forward",
    "activation_backward",
    "global_avg_pool_forward",
    "global_avg_pool_backward",
    "global_max_pool_forward",
    "global_max_pool_backward",
    "linear_forward",
    "linear_backward",
    "channel_mul_forward",
    "channel_mul_backward",
    "add_forward",
    "dropout_forward",
    "dropout_backward",
    "stochastic_depth_forward",
    "stochastic_depth_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "channel_stats_forward",
    "channel_stats_backward",
    "spatial_softmax_forward",
    "spatial_softmax_backward",
    "spatial_mul_forward",
    "spatial_mul_backward",
    "weighted_sum_forward",
    "weighted_sum_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "conv2d_forward",
    "conv2d_backward",
    "conv_padding",
]
