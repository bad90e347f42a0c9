"""Energy and gradients that vary along one axis (docs/theory.md §15), against autograd.

Each test names a network where the scalar rules alone were far off and states by how much; the tolerances are
the probe's sampling error plus the named approximation (diffuse attention weights)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import initcheck
from initcheck.options import ProbeOptions
from initcheck.rules import axis_profile


def _rows(model, x, seeds: int = 4):
    report = initcheck.analyze(model, x, probe=ProbeOptions(device="cpu", seeds=seeds, batch=x.shape[0]))
    return {(r.label, r.op): r for r in report.layers}


class _Block(nn.Module):
    """A pre-LN transformer block with one head and independent N(0, 1/d) projections."""

    def __init__(self, d: int, causal: bool):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        for layer in (self.q, self.k, self.v, self.o, self.fc1, self.fc2):
            nn.init.normal_(layer.weight, std=0.02)  # ViT's init: branches far quieter than the embeddings
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.causal = causal

    def forward(self, x):
        h = self.ln1(x)
        a = nn.functional.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h), is_causal=self.causal)
        x = x + self.o(a)
        return x + self.fc2(torch.relu(self.fc1(self.ln2(x))))


class _ClassToken(nn.Module):
    """ViT's layout: a learned class token of small norm before the patch tokens, a head on that token only."""

    def __init__(self, d: int = 64, depth: int = 3):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = nn.Sequential(*(_Block(d, causal=False) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_head_on_the_class_token_sees_that_tokens_energy(seed):
    """The class token carries ~1/500 of a patch token's energy (ViT's init), and the head's gradient reaches only
    it, so each norm's backward is G_0 / K_0, not G / K averaged: the stream's G was predicted down to 0.02x.
    Every stream and MLP row's G within 25% now. Not tighter: the class token is one vector per network, so what
    each block adds to it is an instance quantity (at d = 64 one network's stream G is 0.67x the prediction)."""
    torch.manual_seed(seed)
    rows = _rows(_ClassToken(d=256).eval(), torch.randn(16, 24, 256))
    stream = [r for (label, op), r in rows.items() if op == "add" or label.endswith(("fc1", "fc2", "ln2", "norm"))]
    assert len(stream) == 13
    for r in stream:
        assert r.symbolic.G == pytest.approx(r.measured.G, rel=0.25), r.label


class _CausalPick(nn.Module):
    """Causal attention read at one query: the first sees only itself, the last sees every key."""

    def __init__(self, d: int, query: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        nn.init.normal_(self.v.weight, std=d**-0.5)
        for layer in (self.q, self.k):  # logits ~1e-4: uniform weights over each row's keys
            nn.init.normal_(layer.weight, std=0.01 * d**-0.5)
        self.query = query

    def forward(self, x):
        attended = nn.functional.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), is_causal=True)
        return attended[:, self.query]


@pytest.mark.parametrize("query", [0, -1])
def test_causal_attention_energy_and_gradient_per_query(query):
    """Query 0 averages one value (K = K_v) and sends all its gradient to key 0 (G_v = G / T per key on average);
    the last query averages T values (K = K_v / T) and spreads its gradient as 1/T^2 over every key. The scalar
    rule gave both the mean over queries, E 1/n_t = H_T / T: 7.8x off for query 0's K at T = 32. Within 5%, on
    1,024 samples: query 0's K is one token's, whose standard error at the 64 samples of 4 seeds is 4%."""
    torch.manual_seed(1)
    rows = _rows(_CausalPick(32, query).eval(), torch.randn(16, 32, 32), seeds=64)
    out = next(r for (label, op), r in rows.items() if op == "gather")
    values = rows[("v", "linear")]
    assert out.symbolic.K == pytest.approx(out.measured.K, rel=0.05)
    assert values.symbolic.G == pytest.approx(values.measured.G, rel=0.05)


class _DenseLayer(nn.Module):
    """DenseNet's concatenation: features of different energy side by side, one train-mode batch norm over all."""

    def __init__(self, norm: str = "batch"):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        nn.init.normal_(self.a.weight, std=0.3)
        nn.init.normal_(self.b.weight, std=0.03)
        self.norm = nn.BatchNorm2d(32) if norm == "batch" else nn.GroupNorm(8, 32)  # a UNet's is a group norm
        self.out = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.out(torch.relu(self.norm(torch.cat([self.a(x), self.b(x)], dim=1))))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_a_norm_behind_a_concatenation_divides_each_part_by_its_own_variance(norm):
    """Parts 100x apart in energy, normalised per channel (a train-mode batch norm) or per group of channels that
    each lie in one part (a group norm): the backward is G E_c[1 / v_c], dominated by the quiet part, and each
    part gets its own share (the loud part 100x less). Before, both got the average through 1 / E v, and the
    quiet part's G was 55x low (and the loud part's 2x high). Both parts and the concatenation within 15%: each
    part's 16 channel variances spread by ~17% in one network (fan-in 72), and E_c[1 / v_c] is that network's."""
    torch.manual_seed(2)
    model = _DenseLayer(norm).train()
    rows = _rows(model, torch.randn(16, 8, 8, 8))
    for key in (("a", "conv"), ("b", "conv"), ("cat", "concat")):
        r = rows[key]
        assert r.symbolic.G == pytest.approx(r.measured.G, rel=0.15), key


def _vit_errors(seed: int) -> dict[str, float]:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536, image_size=64, patch_size=8
    )
    report = initcheck.analyze(
        ViTForImageClassification(config).eval(),
        {"pixel_values": torch.randn(1, 3, 64, 64)},
        probe=ProbeOptions(device="cpu", seeds=4, batch=8),
    )
    return {r.label: math.log(r.symbolic.G / r.measured.G) for r in report.layers if r.measured and r.measured.G}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_norm_scales_the_gradient_positions_share_by_their_own_energies(seed, monkeypatch):
    """Behind a ViT's class token (a hundredth of the patches' energy, nearly all the gradient) a per-position norm
    multiplies G by E_t[q_t / e_t], about 100x, but the gradient the patches share (which the attention's values
    read: each sums the output gradient of all queries) by E_{t != s}[1/sqrt(e_t e_s)], about 1.3x. Given G's
    factor, the first values' G was 1.17-1.18x what the attention output's gradient gives them, against autograd;
    within 5% now (ratios of two rows: one network's class token moves both alike, by up to 15%)."""
    pytest.importorskip("transformers")

    def apart() -> list[float]:
        errors = _vit_errors(seed)
        return [
            errors["vit.layers.0.attention.v_proj"] - errors["vit.layers.0.attention.o_proj"],
            errors["vit.embeddings.patch_embeddings.projection"] - errors["vit.embeddings.dropout"],
        ]

    assert max(abs(e) for e in apart()) < 0.05
    monkeypatch.setattr(axis_profile, "norm_shared_ratio", lambda *args: 1.0)
    assert min(apart()) > 0.12
