"""Issue 5 checks: each has a model that must trigger it and a healthy twin that must not, and the numbers
in the finding are checked against Monte Carlo."""

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


class Up(nn.Module):
    def __init__(self, k, s, p, op, channels=64):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.ConvTranspose2d(channels, channels, k, s, p, op)

    def forward(self, x):
        return self.up(x)


def phase_energies(model, x, s=2):
    with torch.no_grad():
        y = model(x)
    # interior only: the border rows/columns see fewer taps
    y = y[:, :, 2:-2, 2:-2]
    return [float(y[:, :, i::s, j::s].pow(2).mean()) for i in range(s) for j in range(s)]


def test_checkerboard_k3_s2_triggers_with_the_measured_ratio():
    model = Up(3, 2, 1, 1)
    report = initcheck.analyze(model, torch.randn(4, 64, 16, 16))
    f = finding(report, "IC501")
    assert f.severity == "error" and f.fix_value == 4.0  # k=4 is the next kernel divisible by s=2
    energies = phase_energies(model, torch.randn(64, 64, 16, 16))
    measured = max(energies) / min(energies)
    assert f.value == pytest.approx(
        measured, rel=0.1
    )  # per-phase rule with the actual tap energies (docs/theory.md §3)
    assert f.value == pytest.approx(4.0, rel=0.3)  # iid theory: 4 for k=3, s=2
    with torch.no_grad():  # the mean path alone: a constant input paints the pattern of the tap sums S_r
        y = model(torch.ones(1, 64, 16, 16))[:, :, 2:-2, 2:-2] - model.up.bias[None, :, None, None]
    constant = [float(y[:, :, i::2, j::2].pow(2).mean()) for i in range(2) for j in range(2)]
    assert f.details["mean_path_ratio"] == pytest.approx(max(constant) / min(constant), rel=0.02)


def test_checkerboard_healthy_twin_k4_s2():
    report = initcheck.analyze(Up(4, 2, 1, 0), torch.randn(4, 64, 16, 16))
    assert "IC501" not in codes(report)


class Residual(nn.Module):
    """x + f(x) blocks, f = Linear-ReLU-Linear; `gain2` sets the branch gain g, `scale` multiplies each block."""

    def __init__(self, blocks=8, width=256, std_in=2**0.5, std_out=1.0, scale=1.0):
        super().__init__()
        torch.manual_seed(1)
        self.scale = scale
        self.branches = nn.ModuleList()
        for _ in range(blocks):
            a, b = nn.Linear(width, width), nn.Linear(width, width)
            nn.init.normal_(a.weight, 0, std_in / width**0.5)
            nn.init.normal_(b.weight, 0, std_out / width**0.5)
            nn.init.zeros_(a.bias)
            nn.init.zeros_(b.bias)
            self.branches.append(nn.Sequential(a, nn.ReLU(), b))

    def forward(self, x):
        for f in self.branches:
            x = (x + f(x)) * self.scale
        return x


def test_unscaled_residual_triggers_with_2_to_the_L():
    model = Residual()
    x = torch.randn(512, 256)
    report = initcheck.analyze(model, x)
    f = finding(report, "IC502")
    with torch.no_grad():
        measured = float(model(x).pow(2).mean() / x.pow(2).mean())
    assert f.value == pytest.approx(measured, rel=0.25) and f.value == pytest.approx(2**8, rel=0.25)
    assert f.fix_value == pytest.approx(1 / math.sqrt(2), rel=0.05)
    fixed = initcheck.analyze(Residual(scale=f.fix_value), x)  # applying the fix removes the finding
    assert not codes(fixed) & {"IC502", "IC503"}


def test_over_corrected_residual_is_recognised():
    """Glorot-like branch gain g = 1/2 with /sqrt(2): 0.75 per block (docs/theory.md §5)."""
    model = Residual(std_in=1.0, std_out=1.0, scale=1 / math.sqrt(2))
    report = initcheck.analyze(model, torch.randn(512, 256))
    f = finding(report, "IC503")
    assert f.value == pytest.approx(0.75**8, rel=0.3)
    assert f.fix_value == pytest.approx(1 / math.sqrt(0.75), rel=0.05)
    assert "IC502" not in codes(report)


class Attention(nn.Module):
    def __init__(self, d=64, scaled=True):
        super().__init__()
        torch.manual_seed(2)
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        for lin in (self.q, self.k, self.v):
            nn.init.normal_(lin.weight, 0, d**-0.5)
        self.scaled = scaled

    def forward(self, x):
        logits = self.q(x) @ self.k(x).transpose(-1, -2)
        if self.scaled:
            logits = logits / x.shape[-1] ** 0.5
        return torch.softmax(logits, -1) @ self.v(x)


def test_missing_attention_scale_triggers():
    model = Attention(scaled=False)
    x = torch.randn(8, 32, 64)
    report = initcheck.analyze(model, x)
    f = finding(report, "IC504")
    assert f.severity == "error" and "1/sqrt(d_k)" in f.message and f.fix_value == pytest.approx(1 / 8)
    with torch.no_grad():
        logits = model.q(x) @ model.k(x).transpose(-1, -2)
    assert f.value == pytest.approx(float(logits.std()), rel=0.15)  # sigma = sqrt(d_k) E[q^2]^1/2 E[k^2]^1/2


def test_scaled_attention_is_healthy():
    assert "IC504" not in codes(initcheck.analyze(Attention(scaled=True), torch.randn(8, 32, 64)))


def test_explain_documents_the_new_codes(capsys):
    from initcheck.cli import main

    for code in ("IC501", "IC502", "IC503", "IC504"):
        assert main(["explain", code]) == 0
        out = capsys.readouterr().out
        assert "Formula" in out and "Fix" in out


def relu_net(depth, width, seed):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width, bias=False)
        nn.init.normal_(lin.weight, 0, (2 / width) ** 0.5)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, width, bias=False))


def test_deep_narrow_network_is_flagged_and_the_spread_is_right():
    depth, width = 20, 32
    report = initcheck.analyze(relu_net(depth, width, 0), torch.randn(64, width))
    f = finding(report, "IC505")
    # measure the instance-to-instance spread of the input-averaged K over independent initialisations
    x = torch.randn(512, width)
    values = []
    for seed in range(24):
        net = relu_net(depth, width, seed + 100)
        with torch.no_grad():
            values.append(float(net[:-1](x).pow(2).mean()))
    values = torch.tensor(values).log()
    measured_cv2 = math.expm1(float(values.var()))  # log-normal: CV^2 = exp(Var ln K) - 1
    assert f.value >= 1.0  # 'overly deep' (nu L / n ~ 3 for ReLU)
    assert measured_cv2 >= 0.5  # the instances really do differ that much
    assert f.value == pytest.approx(measured_cv2, rel=2.0)  # leading order, 24 draws: within a factor of 3


def test_resampled_probe_puts_the_measured_spread_beside_the_prediction():
    """--resample-weights: each seed permutes every weight tensor, so the probe's run-to-run spread of K is the
    instance-to-instance spread the finding predicts (docs/theory.md §12, 'probe across S weight draws')."""
    depth, width = 20, 32
    options = initcheck.ProbeOptions(batch=64, seeds=16, resample_weights=True)
    f = finding(initcheck.analyze(relu_net(depth, width, 0), torch.randn(64, width), probe=options), "IC505")
    assert f.measured is not None and f.measured >= 0.3
    assert f.value == pytest.approx(f.measured, rel=2.0)  # 16 draws: an order-of-magnitude estimate (§12)


def test_shallow_wide_twin_is_not_flagged():
    report = initcheck.analyze(relu_net(3, 256, 0), torch.randn(64, 256))
    assert "IC505" not in codes(report)
    # at most 5 (L - 1) / n = 0.04 (docs/theory.md §12; a batch of independent inputs averages some of it away)
    assert report.width_regime == "near-infinite-width" and report.instance_spread < 0.04


def _gelu_stack(width: int, depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers)


def test_a_narrow_gelu_stack_states_the_spread_its_instances_show():
    """docs/theory.md §12: a GELU's rule has no O(1/n) bias at small width (over 8 weight draws of a 3-layer,
    16-unit GELU stack the mean ln error of each layer's K is within 0.03 of 0), so its bar is the finite-width
    spread alone: measured 0.03 / 0.11 / 0.21 from layer to layer, stated 0 / 0.14 / 0.38. A bias of 30/n made the
    bars 1.9 / 2.8 / 3.5 (6-45x), every row 'uninformative' and IC401 blind on narrow SiLU/GELU networks."""
    width, depth = 16, 3
    x = torch.randn(4096, width, generator=torch.Generator().manual_seed(1))
    errors, bars = [], []
    for seed in range(8):
        net = _gelu_stack(width, depth, 100 + seed)
        report = initcheck.analyze(net, x[:64])
        rows = [r for r in report.layers if "gelu" in r.op]
        measured, h = [], x
        with torch.no_grad():
            for layer in range(depth):
                h = net[2 * layer + 1](net[2 * layer](h))
                measured.append(float(h.pow(2).mean()))
        errors.append([math.log(r.symbolic.K / k) for r, k in zip(rows, measured)])
        bars.append([r.symbolic.K_bar for r in rows])
    errors_t, bars_t = torch.tensor(errors), torch.tensor(bars).mean(dim=0)
    spread = errors_t.std(dim=0)
    assert errors_t.mean(dim=0).abs().max() < 0.1  # no bias to state
    assert (bars_t <= 3 * spread + 0.05).all(), (bars_t, spread)  # not wider than the instances scatter
    assert bars_t[-1] >= 0.5 * spread[-1] and bars_t[-1] < math.log(2)  # the deepest row: covered, informative


def test_width_regimes_follow_the_spread():
    regimes = {
        depth: initcheck.analyze(relu_net(depth, 64, 0), torch.randn(8, 64)).width_regime for depth in (2, 5, 12, 20)
    }
    assert regimes == {2: "near-infinite-width", 5: "effectively deep", 12: "deep for its width", 20: "overly deep"}


class Recurrent(nn.Module):
    def __init__(self, orthogonal=False):
        super().__init__()
        torch.manual_seed(3)
        self.rnn = nn.RNN(64, 64)
        if orthogonal:
            nn.init.orthogonal_(self.rnn.weight_hh_l0)
            nn.init.normal_(self.rnn.weight_ih_l0, 0, (0.1 / 64) ** 0.5)  # input drive K_in ~ 0.1

    def forward(self, x):
        return self.rnn(x)[0]


def test_vanishing_rnn_gradient_triggers_with_theorys_chi():
    """torch's default tanh RNN (c = 1/3, input width = hidden width) with unit inputs: chi = 0.21 per step
    (docs/theory.md §10)."""
    report = initcheck.analyze(Recurrent(), torch.randn(50, 8, 64))
    f = finding(report, "IC506")
    assert f.fix_value == pytest.approx(0.21, rel=0.15)
    # from the last of 50 steps back to the first: 49 steps through W_hh (no carry in a plain RNN)
    assert f.value == pytest.approx(f.fix_value**49, rel=1e-6, abs=0)
    w_hh = Recurrent().rnn.weight_hh_l0.detach().double()
    assert f.details["spectral_radius"] == pytest.approx(float(torch.linalg.eigvals(w_hh).abs().max()), rel=1e-6)
    assert f.details["spectral_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w_hh, 2)), rel=1e-6)
    assert f.details["spectral_radius"] == pytest.approx(3**-0.5, rel=0.2)  # circular law: sigma sqrt(n) (§10)


def test_orthogonal_rnn_over_a_short_sequence_is_healthy():
    report = initcheck.analyze(Recurrent(orthogonal=True), torch.randn(8, 8, 64))
    assert "IC506" not in codes(report)


def dropout_mlp(p):
    torch.manual_seed(4)
    layers = []
    for _ in range(3):
        lin = nn.Linear(128, 128)
        nn.init.normal_(lin.weight, 0, 128**-0.5)
        nn.init.zeros_(lin.bias)
        layers += [nn.Dropout(p), lin]
    return nn.Sequential(*layers)


def test_dropout_train_eval_factor_matches_measurement():
    model = dropout_mlp(0.5)
    x = torch.randn(4096, 128)
    f = finding(initcheck.analyze(model.eval(), x), "IC507")
    with torch.no_grad():
        train = float(model.train()(x).pow(2).mean())
        evaluation = float(model.eval()(x).pow(2).mean())
    assert f.severity == "warning" and f.value == pytest.approx(8.0)  # (1/(1-0.5))^3
    assert f.value == pytest.approx(train / evaluation, rel=0.1)


def test_no_dropout_no_finding():
    assert "IC507" not in codes(initcheck.analyze(dropout_mlp(0.0), torch.randn(64, 128)))
