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
