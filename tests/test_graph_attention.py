"""IC517: graph attention sharpness versus degree, against Monte Carlo of the model's own logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import initcheck
from initcheck.checks.graph_attention import expected_max


def finding(report, code):
    return next(f for f in report.findings if f.code == code)


class DenseGAT(nn.Module):
    """One GAT head on a fixed graph whose node i has 4 + 60 i / (n - 1) neighbours (degrees 4..64)."""

    def __init__(self, n=64, features=32, degree_scaled=False, max_degree=64):
        super().__init__()
        torch.manual_seed(7)
        self.w = nn.Linear(features, features, bias=False)
        nn.init.xavier_normal_(self.w.weight)
        self.a_node, self.a_neighbour = (
            nn.Parameter(torch.randn(features, 1) * (2 / (features + 1)) ** 0.5) for _ in range(2)
        )
        degrees = [4 + (max_degree - 4) * i // (n - 1) for i in range(n)]
        self.register_buffer("adjacency", torch.arange(n)[None, :] < torch.tensor(degrees)[:, None])
        scale = torch.tensor([expected_max(16) / expected_max(d) for d in degrees])[:, None]
        self.register_buffer("scale", scale if degree_scaled else torch.ones(n, 1))

    def logits(self, h):
        wh = self.w(h)
        e = F.leaky_relu(wh @ self.a_node + (wh @ self.a_neighbour).T, 0.2) * self.scale
        return e.masked_fill(~self.adjacency, float("-inf")), wh

    def forward(self, h):
        e, wh = self.logits(h)
        return torch.softmax(e, dim=-1) @ wh


def measured_sharpness(model, degree, samples=400):
    """d * E p_max over the rows with that degree, for fresh N(0, 1) node features."""
    rows = model.adjacency.sum(dim=1) == degree
    values = []
    with torch.no_grad():
        for _ in range(samples):
            e, _ = model.logits(torch.randn(model.adjacency.shape[0], 32))
            values.append(torch.softmax(e[rows], dim=-1).amax(dim=-1))
    return degree * float(torch.cat(values).mean())


def test_gat_sharpness_grows_with_degree_as_measured():
    model = DenseGAT()
    f = finding(initcheck.analyze(model, torch.randn(64, 32)), "IC517")
    assert (f.details["degree_min"], f.details["degree_max"]) == (4, 64)
    assert f.details["sharpness_min_degree"] == pytest.approx(measured_sharpness(model, 4), rel=0.1)
    assert f.details["sharpness_max_degree"] == pytest.approx(measured_sharpness(model, 64), rel=0.1)
    assert f.details["sharpness_max_degree"] > f.details["sharpness_min_degree"]
    assert f.fix_value == pytest.approx(expected_max(16) / expected_max(64))


def test_degree_hint_is_used_when_the_graph_has_no_mask():
    class NoMask(DenseGAT):
        def forward(self, h):
            wh = self.w(h)
            e = F.leaky_relu(wh @ self.a_node + (wh @ self.a_neighbour).T, 0.2)
            return torch.softmax(e, dim=-1) @ wh

    swept = finding(initcheck.analyze(NoMask(), torch.randn(64, 32)), "IC517")
    assert swept.severity == "info" and "--degree" in swept.message
    hinted = finding(initcheck.analyze(NoMask(), torch.randn(64, 32), degree=16), "IC517")
    assert "--degree" not in hinted.message and "degree 16" in hinted.message


def test_degree_scaled_gat_is_healthy():
    model = DenseGAT(degree_scaled=True)
    f = finding(initcheck.analyze(model, torch.randn(64, 32)), "IC517")
    assert f.severity == "info"
    measured = measured_sharpness(model, 64) / measured_sharpness(model, 4)
    assert f.value == pytest.approx(measured, rel=0.15)
    assert f.value < DenseGAT_unscaled_ratio()


def DenseGAT_unscaled_ratio():  # noqa: N802
    model = DenseGAT()
    return measured_sharpness(model, 64, 100) / measured_sharpness(model, 4, 100)


def test_transformer_attention_is_not_graph_attention():
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    report = initcheck.analyze(layer.eval(), torch.randn(1, 16, 32))
    assert "IC517" not in {f.code for f in report.findings}


def test_wide_degree_range_warns():
    """Degrees 4..1024 (a 1M-entry adjacency mask, kept as a boolean constant): sharpness x5 (theory: 1.6 -> 8.4)."""
    model = DenseGAT(n=1024, max_degree=1024)
    f = finding(initcheck.analyze(model, torch.randn(1024, 32)), "IC517")
    assert f.severity == "warning" and f.details["degree_max"] == 1024
    measured = measured_sharpness(model, 1024, 40) / measured_sharpness(model, 4, 200)
    assert f.value == pytest.approx(measured, rel=0.15)
    assert f.value >= 3
