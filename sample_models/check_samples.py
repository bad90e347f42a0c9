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
    # q k^T without 1/sqrt(d_k): within-row logit std ~ sqrt(32) (IC504); the logits themselves are 32x too large
    # (IC101), and the saturated softmax passes a gradient 10x too large back to them (IC111)
    "attention_unscaled": {"IC101", "IC111", "IC504"},
    "attention_scaled": set(),
    "concat_unbalanced": {"IC102", "IC509"},  # a U-Net skip 10x quieter (K x0.01: IC102) than the up-sampled path
    "concat_balanced": set(),  # 2c -> 2c with Glorot: forward and backward gain 1
    "mean_weights": {"IC510"},  # W ~ N(0.05, 0.05^2): every unit shares half the output energy
    "zero_mean_weights": set(),
    "collapse_chain": {"IC505", "IC513"},  # 24 He-ReLU layers with biases: inputs correlate at rho > 0.95
    "shallow_chain": set(),
    # LN(x + f(x)) with g = 4, chi_f = 1: the gradient x(2/5)^6 toward the input (IC516); inside each block the
    # stream grows x5 (IC502) and the branch is mostly bias (IC511)
    "post_ln_bias_heavy": {"IC511", "IC516"},  # Post-LN resets the stream every block: no IC502
    "pre_ln_stack": set(),
    "residual_overcorrected": {"IC102", "IC112", "IC503"},  # (x + f(x)) / sqrt(2) with g = 1/2: x0.75 per block
    "residual_rescaled": set(),  # (x + f(x)) / sqrt(1 + g)
}
INFO: dict[str, set[str]] = {"subpixel_random": {"IC514"}, "pre_ln_stack": {"IC516"}, "concat_balanced": set()}


class Inception(nn.Module):
    def __init__(self, scale: float = 1.0, c: int = 16):
        super().__init__()
        self.scale = scale
        self.branches = nn.ModuleList(
            [
                nn.Conv2d(c, c, 1),
                nn.Conv2d(c, c, 3, padding=1),
                nn.Conv2d(c, c, 5, padding=2),
                nn.Conv2d(c, c, 3, padding=2, dilation=2),
            ]
        )
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


class Attention(nn.Module):
    """One head over layer-normalised tokens, with or without the 1/sqrt(d_k) scale."""

    def __init__(self, scaled: bool, d: int = 32):
        super().__init__()
        self.scale = d**-0.5 if scaled else 1.0
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        for lin in (self.q, self.k, self.v):
            nn.init.xavier_normal_(lin.weight)

    def forward(self, x):
        x = self.norm(x)
        logits = self.q(x) @ self.k(x).transpose(-1, -2) * self.scale
        return torch.softmax(logits, dim=-1) @ self.v(x)


class ConcatMerge(nn.Module):
    def __init__(self, skip_scale: float, c: int = 8):
        super().__init__()
        self.skip_scale = skip_scale
        self.conv = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, skip, up):
        return self.conv(torch.cat([skip * self.skip_scale, up], dim=1))


def linear(n_in: int, n_out: int, mean: float, std: float, bias_std: float = 0.0) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, mean, std)
    nn.init.normal_(layer.bias, 0, bias_std) if bias_std else nn.init.zeros_(layer.bias)
    return layer


def relu_chain(depth: int, width: int = 64, bias_std: float = 0.3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [linear(width, width, 0.0, (2 / width) ** 0.5, bias_std), nn.ReLU()]
    return nn.Sequential(*layers, linear(width, 10, 0.0, width**-0.5))


class LNStack(nn.Module):
    def __init__(self, placement: str, bias_std: float, blocks: int = 6, d: int = 64):
        super().__init__()
        self.placement = placement
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks + 1))
        self.branches = nn.ModuleList(linear(d, d, 0.0, d**-0.5, bias_std) for _ in range(blocks))

    def forward(self, x):
        for norm, f in zip(self.norms, self.branches):
            x = x + f(norm(x)) if self.placement == "pre" else norm(x + f(x))
        return self.norms[-1](x) if self.placement == "pre" else x


class Residual(nn.Module):
    """8 blocks x + W2 relu(W1 x) with branch gain g = 1/2 (Glorot-like), scaled by `scale` per block."""

    def __init__(self, scale: float, blocks: int = 8, d: int = 64):
        super().__init__()
        self.scale = scale
        self.branches = nn.ModuleList(
            nn.Sequential(linear(d, d, 0.0, d**-0.5), nn.ReLU(), linear(d, d, 0.0, d**-0.5)) for _ in range(blocks)
        )

    def forward(self, x):
        for f in self.branches:
            x = (x + f(x)) * self.scale
        return x


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
        "attention_unscaled": (Attention(scaled=False), (torch.randn(1, 16, 32),), ["tokens"]),
        "attention_scaled": (Attention(scaled=True), (torch.randn(1, 16, 32),), ["tokens"]),
        "concat_unbalanced": (ConcatMerge(0.1), (torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)), ["skip", "up"]),
        "concat_balanced": (ConcatMerge(1.0), (torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)), ["skip", "up"]),
        "mean_weights": (nn.Sequential(linear(64, 64, 0.05, 0.05), nn.Tanh()), (torch.randn(1, 64),), ["x"]),
        "zero_mean_weights": (nn.Sequential(linear(64, 64, 0.0, 0.125), nn.Tanh()), (torch.randn(1, 64),), ["x"]),
        "collapse_chain": (relu_chain(24), (torch.randn(1, 64),), ["x"]),
        "shallow_chain": (relu_chain(3, bias_std=0.0), (torch.randn(1, 64),), ["x"]),
        "post_ln_bias_heavy": (LNStack("post", 3**0.5), (torch.randn(1, 64),), ["x"]),
        "pre_ln_stack": (LNStack("pre", 0.0), (torch.randn(1, 64),), ["x"]),
        "residual_overcorrected": (Residual(2**-0.5), (torch.randn(1, 64),), ["x"]),
        "residual_rescaled": (Residual(1.5**-0.5), (torch.randn(1, 64),), ["x"]),
    }
