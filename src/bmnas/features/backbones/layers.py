"""The unit the small bmnas CNNs (AV-MNIST, MM-IMDB, EgoGesture) are stacked from."""

from __future__ import annotations

from torch import nn

_LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d),
}


def conv_block(
    c_in: int,
    c_out: int,
    *,
    dims: int = 2,
    kernel: int = 3,
    stride: int | tuple[int, ...] = 1,
    pool: int | tuple[int, ...] = 2,
    ceil_mode: bool = False,
) -> nn.Sequential:
    """Conv (``kernel // 2`` padding, no bias: BatchNorm follows) – BatchNorm – ReLU – max-pool.

    ``(B, c_in, *size) -> (B, c_out, *size / (stride · pool))`` on ``dims`` spatial axes. The
    submodules are numbered ``0``–``3``, as the state dicts of these networks name them.
    """
    conv, norm, max_pool = _LAYERS[dims]
    return nn.Sequential(
        conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        max_pool(pool, ceil_mode=ceil_mode),
    )
