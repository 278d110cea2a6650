"""The deep-image-prior "skip" generator (Ulyanov et al.), written compactly for feature inversion.

Configuration of the seed study (PROTOCOLS.md section 4, from DmitryUlyanov/deep-image-prior
``models/skip.py`` as used by Good_transfer / ANTON ``reconstruction.py``): 32 input channels,
six scales with down/up channels [16, 32, 64, 128, 128, 128], 4 skip channels per scale, filters
[7, 7, 5, 5, 3, 3] (down and up), 1x1 skip convolutions, average-pool downsampling, nearest
upsampling, LeakyReLU(0.2), BatchNorm, zero padding, a final 1x1 convolution to RGB and no sigmoid.

One scale, on input ``x`` (``d`` = down channels, ``s`` = skip channels, ``f`` = filter)::

    skip   = LReLU(BN(conv1x1(x -> s)))
    deeper = LReLU(BN(conv_f(x -> d) then avgpool 2)) -> LReLU(BN(conv_f(d -> d))) -> [next scale]
             -> nearest upsample x2
    out    = LReLU(BN(conv1x1(LReLU(BN(conv_f(BN(cat[skip, deeper]) -> u)))))
"""
from __future__ import annotations

import torch
from torch import nn

DIP_CHANNELS = (16, 32, 64, 128, 128, 128)
DIP_SKIP = (4, 4, 4, 4, 4, 4)
DIP_FILTERS = (7, 7, 5, 5, 3, 3)
DIP_INPUT_CHANNELS = 32


def _conv_bn_act(cin: int, cout: int, kernel: int, downsample: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2)]
    if downsample:
        layers.append(nn.AvgPool2d(2, 2))
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


class _Scale(nn.Module):
    """One scale of the skip net; ``inner`` is the next (coarser) scale or None at the bottom."""

    def __init__(self, cin: int, down: int, up: int, skip: int, kernel: int, inner: "_Scale | None", inner_out: int):
        super().__init__()
        self.skip = _conv_bn_act(cin, skip, 1) if skip else None
        self.down = nn.Sequential(_conv_bn_act(cin, down, kernel, downsample=True), _conv_bn_act(down, down, kernel))
        self.inner = inner
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        merged = skip + (inner_out if inner is not None else down)
        self.merge_bn = nn.BatchNorm2d(merged)
        self.up = nn.Sequential(_conv_bn_act(merged, up, kernel), _conv_bn_act(up, up, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deeper = self.down(x)
        if self.inner is not None:
            deeper = self.inner(deeper)
        deeper = self.upsample(deeper)
        if self.skip is not None:
            skipped = self.skip(x)
            h, w = min(skipped.shape[-2], deeper.shape[-2]), min(skipped.shape[-1], deeper.shape[-1])
            deeper = torch.cat([_center(skipped, h, w), _center(deeper, h, w)], dim=1)
        return self.up(self.merge_bn(deeper))


def _center(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


class SkipGenerator(nn.Module):
    """[N, in_channels, H, W] noise -> [N, 3, H, W] image (H, W multiples of 2^scales for exact sizes)."""

    def __init__(self, in_channels: int = DIP_INPUT_CHANNELS, channels=DIP_CHANNELS, skip=DIP_SKIP,
                 filters=DIP_FILTERS, out_channels: int = 3):
        super().__init__()
        if not len(channels) == len(skip) == len(filters):
            raise ValueError("channels, skip and filters need one entry per scale")
        self.scales = len(channels)
        self.in_channels = in_channels
        inner, inner_out = None, 0
        for i in reversed(range(len(channels))):
            cin = in_channels if i == 0 else channels[i - 1]
            inner = _Scale(cin, channels[i], channels[i], skip[i], filters[i], inner, inner_out)
            inner_out = channels[i]
        self.body = inner
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))


def noise_side(size: int, scales: int = len(DIP_CHANNELS)) -> int:
    """Noise side for a ``size`` output: the next multiple of 2^scales (224 -> 256, as ANTON), at least
    2^(scales + 1) so the coarsest scale is 2 x 2 (BatchNorm in train mode needs > 1 value per channel)."""
    step = 2 ** scales
    return max(2 * step, ((size + step - 1) // step) * step)
