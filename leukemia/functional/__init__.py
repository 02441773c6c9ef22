"""Layer-level NumPy API of the C core (NCHW float32 in and out).

Each function plans the layer for the given shapes, runs it in C with the GIL
released and returns new arrays. It exists for testing and experiments; the
models in `leukemia.models` run whole networks without these round trips.
"""

from .conv import conv2d_backward, conv2d_forward, conv_padding

__all__ = ["conv2d_forward", "conv2d_backward", "conv_padding"]
