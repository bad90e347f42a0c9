"""IC508 (unscaled branch sums) and IC509 (concat fan-in): triggers, healthy twins, numbers vs Monte Carlo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import initcheck


def codes(report):
    return {f.code for f in report.findings}


def finding(report, code):
    return next(f for f in report.findings if f.code == code)


class Inception(nn.Module):
    """Four parallel convs of one input (k = 1, 3, 5, 3 dilated), each variance-preserving, summed."""

    def __init__(self, scale=1.0, channels=32):
        super().__init__()
        torch.manual_seed(2)
        self.scale = scale
        self.branches = nn.ModuleList(
            [
                nn.Conv2d(channels, channels, 1),
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.Conv2d(channels, channels, 5, padding=2),
                nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            ]
        )
        for conv in self.branches:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return sum(b(x) for b in self.branches) * self.scale


def test_unscaled_branch_sum_matches_the_measured_growth():
    model = Inception()
    report = initcheck.analyze(model, torch.randn(2, 32, 12, 12))
    f = finding(report, "IC508")
    x = torch.randn(64, 32, 12, 12)
    with torch.no_grad():
        measured = float(model(x).pow(2).mean() / x.pow(2).mean())
    # sum of branch gains, zero-padding borders included (docs/theory.md §2, §5): 4 for interior-only balanced branches
    assert f.value == pytest.approx(measured, rel=0.05)
    assert 3.0 < measured < 4.0
    assert f.details["branches"] == 4
    assert f.fix_value == pytest.approx(measured**-0.5, rel=0.03)


def test_branch_sum_quotes_the_probes_measurement():
    report = initcheck.analyze(Inception(), torch.randn(2, 32, 12, 12), probe=True)
    f = finding(report, "IC508")
    assert f.measured == pytest.approx(f.value, rel=0.1)


def test_scaled_branch_sum_is_healthy():
    assert "IC508" not in codes(initcheck.analyze(Inception(scale=0.5), torch.randn(2, 32, 12, 12)))


class UNetMerge(nn.Module):
    """concat(skip, up) -> 3x3 conv with Glorot recomputed for the merged fan-in (docs/theory.md §5)."""

    def __init__(self, c=32, c_out=32, skip_scale=1.0):
        super().__init__()
        torch.manual_seed(3)
        self.skip_scale = skip_scale
        self.conv = nn.Conv2d(2 * c, c_out, 3, padding=1)
        nn.init.xavier_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, skip, up):
        return self.conv(torch.cat([skip * self.skip_scale, up], dim=1))


def measured_gains(model, c=32, size=32):
    skip, up = torch.randn(32, c, size, size, requires_grad=True), torch.randn(32, c, size, size, requires_grad=True)
    y = model(skip, up)
    cotangent = torch.randn_like(y)
    y.backward(cotangent)
    forward = float(y.pow(2).mean() / 1.0)
    backward = float(up.grad.pow(2).mean() / cotangent.pow(2).mean())
    return forward, backward


def test_concat_2c_to_c_shifts_forward_and_backward_gain():
    model = UNetMerge()
    report = initcheck.analyze(model, (torch.randn(1, 32, 32, 32), torch.randn(1, 32, 32, 32)))
    f = finding(report, "IC509")
    assert f.severity == "info"
    forward, backward = measured_gains(model)
    assert f.details["forward_gain"] == pytest.approx(forward, rel=0.05)
    assert f.details["backward_gain"] == pytest.approx(backward, rel=0.05)
    # theory: 4/3 and 2/3 in the interior; 3x3 zero padding on 32x32 costs ~4%
    assert forward == pytest.approx(4 / 3 * 0.959, rel=0.05) and backward == pytest.approx(2 / 3 * 0.959, rel=0.05)
    assert f.fix_value == pytest.approx(f.details["forward_gain"] ** -0.5)


def test_concat_2c_to_2c_is_healthy():
    report = initcheck.analyze(UNetMerge(c_out=64), (torch.randn(1, 32, 32, 32), torch.randn(1, 32, 32, 32)))
    assert "IC509" not in codes(report)


def test_concat_of_unbalanced_parts_warns():
    report = initcheck.analyze(
        UNetMerge(c_out=64, skip_scale=0.1), (torch.randn(1, 32, 32, 32), torch.randn(1, 32, 32, 32))
    )
    f = finding(report, "IC509")
    assert f.severity == "warning" and f.value == pytest.approx(100, rel=0.05)
