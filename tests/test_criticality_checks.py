"""IC510-IC513: non-zero-mean weights, dominant biases, off-critical chains, input-correlation collapse.
Each has a model that must trigger it, a healthy twin, and its number checked against Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initcheck


def codes(report):
    return {f.code for f in report.findings}


def finding(report, code):
    return next(f for f in report.findings if f.code == code)


def linear(n_in, n_out, w_mean=0.0, w_std=1.0, b_std=0.0, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, w_mean, w_std)
    nn.init.normal_(layer.bias, 0, b_std) if b_std else nn.init.zeros_(layer.bias)
    return layer


def test_nonzero_mean_weights_common_component_matches_measurement():
    model = linear(64, 256, w_mean=0.05, w_std=0.05)
    f = finding(initcheck.analyze(model, torch.randn(4, 64)), "IC510")
    x = torch.randn(4096, 64)
    with torch.no_grad():
        y = model(x)
    common = float(y.mean(dim=1).pow(2).mean() / y.pow(2).mean())  # the component every unit shares
    assert f.value == pytest.approx(common, rel=0.05)  # mu^2 / E[W^2] = 0.5 (+ sigma^2 / n_out)
    assert f.fix_value == pytest.approx(-float(model.weight.mean()))
    assert f.details["mean_amplification"] == pytest.approx(1 + 64 * 0.5, rel=0.1)  # R / (fan_in E[W^2])


def test_zero_mean_weights_are_healthy():
    assert "IC510" not in codes(initcheck.analyze(linear(64, 256, w_std=0.125), torch.randn(4, 64)))


def test_dominant_bias_share_matches_measurement():
    model = linear(64, 64, w_std=0.1 / 8, b_std=1.0)
    f = finding(initcheck.analyze(model, torch.randn(4, 64)), "IC511")
    x = torch.randn(8192, 64)
    with torch.no_grad():
        y = model(x)
    constant = float(y.mean(dim=0).pow(2).mean() / y.pow(2).mean())  # the input-independent share
    assert f.value == pytest.approx(constant, rel=0.02)
    assert f.value > 0.98


def test_small_bias_is_healthy():
    report = initcheck.analyze(linear(64, 64, w_std=1 / 8, b_std=0.1), torch.randn(4, 64))
    assert "IC511" not in codes(report)


class Chain(nn.Module):
    """depth x (Linear -> act) then a read-out; pre-activations kept for measurement."""

    def __init__(self, depth, width, act, gain, bias_std=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(
            linear(width, width, w_std=gain / width**0.5, b_std=bias_std, seed=seed + i) for i in range(depth)
        )
        self.act, self.out = act, nn.Linear(width, 10)

    def forward(self, x, keep=None):
        for layer in self.layers:
            x = layer(x)
            if keep is not None:
                if x.requires_grad:
                    x.retain_grad()
                keep.append(x)
            x = self.act(x)
        return self.out(x)


def test_chaotic_tanh_chain_gradient_product_matches_measurement():
    model = Chain(24, 256, torch.tanh, 5 / 3)  # torch's tanh gain: chaotic (docs/theory.md §4)
    f = finding(initcheck.analyze(model, torch.randn(4, 256)), "IC512")
    assert "chaotic" in f.message
    pre = []
    model(torch.randn(256, 256), pre)
    pre[-1].backward(torch.randn_like(pre[-1]))  # cotangent at the last chain member's output
    # the chain: activations 1..23 each feed the next Linear; Pi chi_perp = G(pre_1) / G(pre_24) (equal widths)
    measured = float(pre[0].grad.pow(2).mean() / pre[-1].grad.pow(2).mean())
    assert math.log10(f.value) == pytest.approx(math.log10(measured), abs=0.1)
    assert f.value > 10 and f.fix_value < 1


def test_he_relu_chain_is_critical():
    report = initcheck.analyze(Chain(12, 256, torch.relu, 2**0.5), torch.randn(4, 256))
    assert "IC512" not in codes(report)
    chis = [row.chi_perp for row in report.layers if row.chi_perp is not None]
    # 1 in expectation; the actual weights and row sums move each layer by a few percent
    assert len(chis) == 11 and all(c == pytest.approx(1.0, abs=0.05) for c in chis)
    assert math.prod(chis) == pytest.approx(1.0, abs=0.2)


def test_correlation_collapse_matches_measured_cosine():
    model = Chain(24, 512, torch.relu, 2**0.5, bias_std=0.3)
    report = initcheck.analyze(model, torch.randn(4, 512))
    f = finding(report, "IC513")
    pre = []
    with torch.no_grad():
        model(torch.randn(64, 512), pre)
    z = pre[-2]  # the last chain member's pre-activation (the final activation feeds the read-out)
    z = z / z.norm(dim=1, keepdim=True)
    gram = z @ z.T
    cosine = float((gram.sum() - gram.diagonal().sum()) / (64 * 63))
    assert f.value == pytest.approx(cosine, abs=0.02)
    assert f.value >= 0.95


def test_shallow_relu_chain_keeps_inputs_apart():
    assert "IC513" not in codes(initcheck.analyze(Chain(4, 512, torch.relu, 2**0.5), torch.randn(4, 512)))


def test_collapse_quotes_the_probes_cosine():
    report = initcheck.analyze(
        Chain(24, 512, torch.relu, 2**0.5, bias_std=0.3),
        torch.randn(4, 512),
        probe=initcheck.ProbeOptions(batch=32, seeds=2),
    )
    f = finding(report, "IC513")
    assert f.measured == pytest.approx(f.value, abs=0.03)


def test_declared_deviation_turns_a_finding_into_information():
    """Issue 5 §13: a deliberately larger-than-critical init (e.g. meta-learned), declared per layer in the
    config, is reported as information with the reason, not as a warning."""
    from initcheck.config import Config, Rule

    model = Chain(24, 256, torch.tanh, 5 / 3)
    plain = finding(initcheck.analyze(model, torch.randn(4, 256)), "IC512")
    config = Config(deviations=(Rule(code="IC512", layer="layers.*", reason="meta-learned init"),))
    declared = finding(initcheck.analyze(model, torch.randn(4, 256), config=config), "IC512")
    assert plain.severity == "warning" and declared.severity == "info"
    assert declared.declared == "meta-learned init" and declared.value == plain.value
    other_layer = Config(deviations=(Rule(code="IC512", layer="out*", reason="x"),))
    assert finding(initcheck.analyze(model, torch.randn(4, 256), config=other_layer), "IC512").severity == "warning"
