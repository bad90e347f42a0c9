"""IC516: Pre-LN and Post-LN stacks, their stream growth and gradient ratio against Monte Carlo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import initcheck


def finding(report, code):
    return next(f for f in report.findings if f.code == code)


class Stack(nn.Module):
    """blocks of x + f(LN(x)) (pre) or LN(x + f(x)) (post); f = Linear with weight std 1/sqrt(d), bias std b."""

    def __init__(self, placement, blocks=6, d=256, bias_std=0.0, final_norm=True):
        super().__init__()
        torch.manual_seed(6)
        self.placement, self.final_norm = placement, final_norm
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks + 1))
        self.branches = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        for f in self.branches:
            nn.init.normal_(f.weight, 0, d**-0.5)
            nn.init.normal_(f.bias, 0, bias_std) if bias_std else nn.init.zeros_(f.bias)

    def forward(self, x, keep=None):
        for norm, f in zip(self.norms, self.branches):
            x = x + f(norm(x)) if self.placement == "pre" else norm(x + f(x))
        if keep is not None:
            keep.append(x)
        return self.norms[-1](x) if self.final_norm and self.placement == "pre" else x


def measured(model, d=256):
    x = torch.randn(512, d, requires_grad=True)
    stream = []
    y = model(x, stream)
    stream[0].retain_grad()
    y.backward(torch.randn_like(y))
    growth = float(stream[0].pow(2).mean() / x.pow(2).mean())
    gradient = float(x.grad.pow(2).mean() / stream[0].grad.pow(2).mean())
    return growth, gradient


def test_pre_ln_stream_growth_and_gradient_match_measurement():
    model = Stack("pre")
    f = finding(initcheck.analyze(model, torch.randn(2, 256)), "IC516")
    growth, gradient = measured(model)
    assert f.severity == "info" and "Pre-LN" in f.message
    assert f.details["stream_growth"] == pytest.approx(growth, rel=0.1)  # K_l = K_0 + c l: 1 + 6 here
    assert f.value == pytest.approx(gradient, rel=0.15)
    assert growth == pytest.approx(7, rel=0.1)


def test_pre_ln_without_final_norm_warns():
    f = finding(initcheck.analyze(Stack("pre", final_norm=False), torch.randn(2, 256)), "IC516")
    assert f.severity == "warning" and "final normalisation" in f.fix


def test_post_ln_with_bias_heavy_branches_shrinks_the_gradient():
    model = Stack("post", d=1024, bias_std=3**0.5)  # g = 1 + 3 forward, chi_f = 1 backward: 2/5 per block
    f = finding(initcheck.analyze(model, torch.randn(2, 1024)), "IC516")
    _, gradient = measured(model, d=1024)
    assert f.severity == "warning" and "Post-LN" in f.message
    # the bias is one direction shared by all samples: |W b|^2 of one W deviates by ~sqrt(2/d) per block (§12)
    assert f.value == pytest.approx(gradient, rel=0.2)
    assert f.value == pytest.approx(0.4**6, rel=0.3)


def test_matched_post_ln_is_information_only():
    f = finding(initcheck.analyze(Stack("post"), torch.randn(2, 256)), "IC516")
    assert f.severity == "info" and f.value == pytest.approx(1.0, abs=0.15)  # (1 + 1)/(1 + 1) per block


class CastingStack(Stack):
    """The same stack, its norms fed through x.to(float32) and x.clone() as HF's RMSNorm and some blocks write."""

    def forward(self, x, keep=None):
        for norm, f in zip(self.norms, self.branches):
            x = x.clone() + f(norm(x.to(torch.float32)))
        return self.norms[-1](x.to(torch.float32))


def test_float_casts_and_copies_do_not_hide_a_residual_stream():
    """A same-dtype cast or copy is the value itself: the live module (where torch.export keeps the casts) finds
    the same blocks and the same IC516 numbers as the plain stack (an ONNX exporter folds such casts). Before,
    HF Llama's stream went unseen live and was a warning through the dynamo exporter."""
    plain = finding(initcheck.analyze(Stack("pre").eval(), torch.randn(4, 256)), "IC516")
    casting = finding(initcheck.analyze(CastingStack("pre").eval(), torch.randn(4, 256)), "IC516")
    assert casting.value == pytest.approx(plain.value, rel=1e-9) and casting.details == pytest.approx(plain.details)
