"""The lean benchmark's estimator (benchmarks/lean.py, docs/theory.md §18) on gradients whose lean is known."""

import pytest
import torch
from conftest import load_benchmark


@pytest.fixture(scope="module")
def lean():
    return load_benchmark("lean")


def _leaning(common: float, own: float, seed: int = 0):
    """256 samples x 32 channels x 16x16 positions: x ~ N(0, 1) and g = beta x~ + N(0, 1), beta = a coefficient per
    sample (variance `common`) plus one per sample and channel (variance `own`)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 32, 16, 16, generator=generator, dtype=torch.float64)
    beta = common**0.5 * torch.randn(256, 1, generator=generator, dtype=torch.float64)
    beta = beta + own**0.5 * torch.randn(256, 32, generator=generator, dtype=torch.float64)
    xt = x - x.mean((2, 3), keepdim=True)
    return x, beta[:, :, None, None] * xt + torch.randn(x.shape, generator=generator, dtype=torch.float64), beta


@pytest.mark.parametrize("common, own", [(0.004, 0.0), (0.0, 0.004), (0.002, 0.002)])
def test_the_lean_is_read_back_from_its_gradient(lean, common, own):
    """R = n E[beta^2] Var(x~) / E[g~^2] (256 positions: 1.0 at E[beta^2] = 0.004) within 10%, and the coefficient's
    shared and own parts within 0.0004 (a tenth of the lean), against the coefficients drawn."""
    x, g, beta = _leaning(common, own)
    stats = lean.lean_statistics(x, g)
    drawn_common = float((beta.mean(1) ** 2).mean())
    drawn_own = float(((beta - beta.mean(1, keepdim=True)) ** 2).mean())
    lean_energy = (drawn_common + drawn_own) * 255 / 256  # x less its mean over the 256 positions
    assert stats["R"] == pytest.approx(256 * lean_energy / (1 + lean_energy), rel=0.1)
    assert stats["common"] == pytest.approx(drawn_common, abs=4e-4)
    assert stats["own"] == pytest.approx(drawn_own, abs=4e-4)
    assert stats["shared"] < 0.01


def test_a_gradient_that_does_not_lean_reads_none(lean):
    """Independent of x: R within 0.1 of 0 (the positions' own products are not counted), no coefficient."""
    x, g, _ = _leaning(0.0, 0.0)
    stats = lean.lean_statistics(x, g)
    assert abs(stats["R"]) < 0.1
    assert abs(stats["common"]) < 1e-4 and abs(stats["own"]) < 1e-4


def test_a_gates_gradient_is_split_into_its_parts(lean):
    """sum_p g_p x_p with g = a (the same at every position) + beta x~ + noise: the coherent part is n^2 E[a^2]
    E[mean x^2], the pairs n^2 E[beta^2] Var(x~)^2 and the independent products n E[g~^2 x^2]; the three shares of
    E[(sum g x)^2] within 0.03 of those drawn, and the shared share of G within 0.01."""
    generator = torch.Generator().manual_seed(1)
    shape = (512, 16, 8, 8)
    x = 0.5 + torch.randn(shape, generator=generator, dtype=torch.float64)
    a = 0.3 * torch.randn(512, 16, 1, 1, generator=generator, dtype=torch.float64)
    beta = 0.1 * torch.randn(512, 16, 1, 1, generator=generator, dtype=torch.float64)
    xt = x - x.mean((2, 3), keepdim=True)
    g = a + beta * xt + torch.randn(shape, generator=generator, dtype=torch.float64)
    stats = lean.gate_statistics(x, g)
    n, v = 64, 1 - 1 / 64  # v: the variance of x~ and of the noise less its mean over the positions
    coherent = n**2 * (0.09 + 1 / n) * (0.25 + 1 / n)  # the means over the map keep 1/n of the noise
    independent = n * v * v * (1 + 3 * 0.01)  # noise x x~ and beta x~^2 at each position (E[x~^4] = 3 v^2)
    pairs = 0.01 * (n**2 + 2 * n) * v**2 + n * v * v - independent
    total = coherent + pairs + independent
    assert stats["coherent"] == pytest.approx(coherent / total, abs=0.03)
    assert stats["pairs"] == pytest.approx(pairs / total, abs=0.03)
    assert stats["independent"] == pytest.approx(independent / total, abs=0.03)
    assert stats["shared"] == pytest.approx(0.09 / (0.09 + 1.01), abs=0.01)
    assert stats["overlap"] == pytest.approx(1.0, abs=0.05) and stats["map"] == pytest.approx(1.0, abs=0.02)


def test_a_stride_phase_pattern_correlates_two_positions_apart(lean):
    """A gradient constant on each stride-2 phase (a strided conv's backward of a shared gradient) correlates fully
    two positions apart and not at all one apart; white noise at neither."""
    generator = torch.Generator().manual_seed(2)
    phases = torch.randn(64, 8, 2, 2, generator=generator, dtype=torch.float64)
    pattern = phases.repeat(1, 1, 8, 8)
    assert lean._lag_correlation(pattern, 2) == pytest.approx(1.0)
    assert abs(lean._lag_correlation(pattern, 1)) < 0.05
    noise = torch.randn(64, 8, 16, 16, generator=generator, dtype=torch.float64)
    assert abs(lean._lag_correlation(noise, 1)) < 0.02 and abs(lean._lag_correlation(noise, 2)) < 0.02
