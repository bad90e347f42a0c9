"""IC514 (sub-pixel conv without ICNR) and IC515 (strided-conv gradient checkerboard): triggers, healthy twins,
numbers against Monte Carlo, through both the live-module and the ONNX frontend."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import initcheck


def codes(report):
    return {f.code for f in report.findings}


def finding(report, code):
    return next(f for f in report.findings if f.code == code)


class SubPixel(nn.Module):
    def __init__(self, icnr=False, c=16, r=2):
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.shuffle = nn.Conv2d(c, c * r * r, 3, padding=1), nn.PixelShuffle(r)
        nn.init.zeros_(self.conv.bias)
        if icnr:
            with torch.no_grad():
                base = torch.randn(c, c, 3, 3) * (2 / (9 * c)) ** 0.5
                self.conv.weight.copy_(base.repeat_interleave(r * r, dim=0))

    def forward(self, x):
        return self.shuffle(torch.relu(self.conv(x)))


def subpixel_correlation(model, r=2):
    """Correlation of the r^2 sub-pixels of a block for a white input (interior positions, zero bias)."""
    with torch.no_grad():
        y = model.conv(torch.randn(64, 16, 12, 12))[:, :, 1:-1, 1:-1]
    y = y.reshape(64, -1, r * r, *y.shape[2:]).permute(2, 0, 1, 3, 4).reshape(r * r, -1)  # phase x everything
    gram = (y @ y.T) / y.shape[1]
    norms = gram.diagonal().sqrt()
    corr = gram / norms[:, None] / norms[None, :]
    return float((corr.sum() - corr.diagonal().sum()) / (r * r * (r * r - 1)))


def test_random_subpixel_conv_is_flagged_with_its_coherence():
    model = SubPixel()
    f = finding(initcheck.analyze(model, torch.randn(1, 16, 12, 12)), "IC514")
    assert f.severity == "info" and f.details["block"] == 2
    assert f.value == pytest.approx(subpixel_correlation(model), abs=0.05)
    assert abs(f.value) < 0.2


def test_icnr_subpixel_conv_is_healthy():
    model = SubPixel(icnr=True)
    assert "IC514" not in codes(initcheck.analyze(model, torch.randn(1, 16, 12, 12)))
    assert subpixel_correlation(model) > 0.99


@pytest.mark.parametrize("icnr", [False, True])
def test_onnx_depth_to_space_gives_the_same_coherence(tmp_path, icnr):
    model = SubPixel(icnr=icnr)
    path = tmp_path / "subpixel.onnx"
    torch.onnx.export(model, (torch.randn(1, 16, 12, 12),), str(path), dynamo=False, opset_version=17)
    onnx_report = initcheck.analyze(path)
    assert ("IC514" in codes(onnx_report)) is not icnr
    if not icnr:
        live = finding(initcheck.analyze(model, torch.randn(1, 16, 12, 12)), "IC514")
        assert finding(onnx_report, "IC514").value == pytest.approx(live.value, abs=1e-6)


class Strided(nn.Module):
    """conv (3x3, s=1) -> ReLU -> conv (k, s=2): the second conv's gradient lands on the first conv's outputs."""

    def __init__(self, k=3, shortcut=False):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Conv2d(8, 32, 3, padding=1), nn.Conv2d(32, 32, k, 2, padding=(k - 1) // 2)
        self.shortcut = nn.Conv2d(32, 32, 1, 2) if shortcut else None

    def forward(self, x):
        h = torch.relu(self.a(x))
        y = self.b(h)
        return y + self.shortcut(h) if self.shortcut is not None else y


def gradient_phase_ratio(model):
    x = torch.randn(32, 8, 16, 16)
    h = torch.relu(model.a(x))
    h.retain_grad()
    y = model.b(h) if model.shortcut is None else model.b(h) + model.shortcut(h)
    y.backward(torch.randn_like(y))
    g = h.grad[:, :, 2:-2, 2:-2]  # interior: borders see fewer taps
    energies = [float(g[:, :, i::2, j::2].pow(2).mean()) for i in range(2) for j in range(2)]
    return max(energies) / min(energies)


def test_strided_conv_gradient_checkerboard_matches_measurement():
    model = Strided(k=3)
    f = finding(initcheck.analyze(model, torch.randn(1, 8, 16, 16)), "IC515")
    assert f.severity == "warning" and f.value == 4.0  # taps per phase (2, 1) per axis
    assert gradient_phase_ratio(model) == pytest.approx(f.value, rel=0.15)  # actual weights: iid expectation


def test_strided_conv_with_divisible_kernel_is_healthy():
    model = Strided(k=4)
    assert "IC515" not in codes(initcheck.analyze(model, torch.randn(1, 8, 16, 16)))
    assert gradient_phase_ratio(model) == pytest.approx(1.0, abs=0.1)


def test_a_merged_path_is_not_judged_alone():
    """ResNet-style: a 1x1 s=2 shortcut beside the main path reads the same map, so the phase grids add up."""
    report = initcheck.analyze(Strided(k=3, shortcut=True), torch.randn(1, 8, 16, 16))
    assert "IC515" not in codes(report)
