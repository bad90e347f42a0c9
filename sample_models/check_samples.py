"""Samples for the architecture checks of issue 5, each with a healthy twin: unscaled Inception-style branch
sums, strided encoders whose gradient comes back as a checkerboard, sub-pixel up-samplers with and without
ICNR. (Graph attention's pair lives in tests/test_graph_attention.py: averaging over hundreds of independent
neighbours also shrinks K by ~e^(sigma^2)/d, so neither twin of it would be a clean sample.)"""

from __future__ import annotations

import torch
from torch import nn

# sample -> codes it must raise at warning/error level; INFO: info-level codes it must raise
EXPECTED: dict[str, set[str]] = {
    "inception_unscaled": {"IC508"},  # 4 variance-preserving branches summed: K x ~3.7 (borders lower it from 4)
    "inception_scaled": set(),  # the same, sum x 1/2
    "strided_encoder_k3": {"IC515"},  # k=3, s=2 after a conv: the gradient reaches its input as 4:2:2:1
    "strided_encoder_k4": set(),  # k=4, s=2: every input phase gets two taps per axis
    "subpixel_random": set(),
    "subpixel_icnr": set(),
}
INFO: dict[str, set[str]] = {"subpixel_random": {"IC514"}}


class Inception(nn.Module):
    def __init__(self, scale: float = 1.0, c: int = 16):
        super().__init__()
        self.scale = scale
        self.branches = nn.ModuleList([nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 5, padding=2),
                                       nn.Conv2d(c, c, 3, padding=2, dilation=2)])
        for conv in self.branches:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return sum(b(x) for b in self.branches) * self.scale


class StridedEncoder(nn.Module):
    def __init__(self, k: int, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.down = nn.Conv2d(c, 2 * c, k, stride=2, padding=(k - 1) // 2)
        for conv in (self.stem, self.down):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return torch.relu(self.down(torch.relu(self.stem(x))))


class SubPixel(nn.Module):
    def __init__(self, icnr: bool, c: int = 16, r: int = 2):
        super().__init__()
        self.conv, self.shuffle = nn.Conv2d(c, 3 * r * r, 3, padding=1), nn.PixelShuffle(r)
        nn.init.zeros_(self.conv.bias)
        if icnr:  # one kernel per output channel, copied to its r^2 sub-pixel positions
            with torch.no_grad():
                base = torch.randn(3, c, 3, 3) * (1 / (9 * c)) ** 0.5
                self.conv.weight.copy_(base.repeat_interleave(r * r, dim=0))

    def forward(self, x):
        return self.shuffle(self.conv(x))


def samples() -> dict[str, tuple[nn.Module, tuple, list[str]]]:
    torch.manual_seed(1)
    image = (torch.randn(1, 16, 16, 16),)
    return {
        "inception_unscaled": (Inception(), image, ["x"]),
        "inception_scaled": (Inception(scale=0.5), image, ["x"]),
        "strided_encoder_k3": (StridedEncoder(3), (torch.randn(1, 3, 32, 32),), ["image"]),
        "strided_encoder_k4": (StridedEncoder(4), (torch.randn(1, 3, 32, 32),), ["image"]),
        "subpixel_random": (SubPixel(icnr=False), image, ["features"]),
        "subpixel_icnr": (SubPixel(icnr=True), image, ["features"]),
    }
