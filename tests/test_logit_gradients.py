"""The gradient a causal softmax sends its queries and keys (docs/theory.md §15, §16): rows of different lengths
and different output gradients, RoPE's sines weighing the tokens unevenly, and the keys' sums over queries that
co-vary. The zoo's Llama (transformers' config and init, 4 layers, 32 tokens) against autograd; each part,
disabled, breaks the test that states it (the numbers are in the docstrings)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initcheck
from initcheck.analysis import symbolic
from initcheck.probes.common import ProbeOptions
from initcheck.rules import attention, dispersion, merge


def _report():
    from zoo import STOCK

    module, inputs = next(m for m in STOCK if m.name == "llama").build()
    return initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=4, batch=8))


@pytest.fixture(scope="module")
def report():
    return _report()


def _log_ratio(report, label: str) -> float:
    row = next(r for r in report.layers if r.label == label and r.measured is not None)
    return math.log(row.symbolic.G / row.measured.G)


def _rotated_half_of_keys(report, layer: int) -> float:
    """The keys' rotated half (rotate_half's negated slice): the gradient RoPE's sines leave it."""
    rows = [
        r
        for r in report.layers
        if r.label == f"model.layers.{layer}.self_attn" and r.op == "pointwise" and r.measured is not None
    ]
    return math.log(rows[1].symbolic.G / rows[1].measured.G)


def test_queries_and_keys_of_the_first_causal_attention(report):
    """Row t of a diffuse causal softmax passes G_t (1 - 1/n_t) / n_t on: the first rows, which see few keys, get
    most of the logits' gradient, and the attention output's gradient is largest there too (the causal
    attentions after it send the early tokens most). Taken apart (the scalar rule), the first layer's query and
    key projections' G was 0.81x and 0.87x the measurement."""
    assert _log_ratio(report, "model.layers.0.self_attn.q_proj") == pytest.approx(0.0, abs=0.1)
    assert _log_ratio(report, "model.layers.0.self_attn.k_proj") == pytest.approx(0.0, abs=0.1)


def test_rope_sines_weigh_the_keys_gradient_where_it_lies(report):
    """A key's gradient lies mostly on the first tokens (the rows that see them are short), where RoPE's sines
    are near 0 (exactly 0 at the first): the keys' rotated half gets far less than the sines' mean square says
    (+0.37 to +0.66 in ln before)."""
    for layer in range(4):
        assert _rotated_half_of_keys(report, layer) == pytest.approx(0.0, abs=0.15)


def _share_of_rotated_query(report, layer: int) -> float:
    """ln of (the queries' rotated half's G / the query projection's G), predicted over measured: the split of a
    query's gradient between the half RoPE's cosines weigh and the half its sines weigh."""
    scope = f"model.layers.{layer}.self_attn"
    rotated = next(r for r in report.layers if r.label == scope and r.op == "pointwise" and r.measured is not None)
    query = next(r for r in report.layers if r.label == f"{scope}.q_proj" and r.measured is not None)
    return math.log((rotated.symbolic.G / query.symbolic.G) / (rotated.measured.G / query.measured.G))


def test_rope_queries_gradient_lies_on_the_fast_turning_features():
    """A softmax's backward removes what a row's keys have in common. A rotation pair that turns slowly along the
    row leaves the keys' shared part in common, a fast one scatters it, so the queries' gradient lies on the fast
    pairs, where RoPE's sines are large: the queries' rotated half takes more than the sines' mean square says.
    The zoo's Llama at a 1B model's per-layer gain (hidden 256, head size 64) at 128 tokens (the sine and cosine
    tables, 8,192 entries each, are kept as tables), 32 sequences: the rotated half's share of each query
    projection's G in layers 1-3 was 0.83-0.88x the measurement with the sines' mean square (mean ln -0.153), now
    0.89-0.94x (mean ln -0.095); what is left is the keys' part of the same effect, not modelled yet."""
    from zoo import llama_at_scale

    model, _ = llama_at_scale()
    ids = torch.randint(0, 1000, (1, 128), generator=torch.Generator().manual_seed(0))
    report = initcheck.analyze(
        model, {"input_ids": ids}, probe=ProbeOptions(device="cpu", seeds=8, batch=4), all_nodes=True
    )
    # the first layer's keys share nothing (independent tokens): nothing cancels, the sines' mean square holds
    assert _share_of_rotated_query(report, 0) == pytest.approx(0.0, abs=0.05)
    assert sum(_share_of_rotated_query(report, layer) for layer in (1, 2, 3)) / 3 > -0.12


def test_deep_keys_sum_queries_that_co_vary(report):
    """Deeper in the stack queries and their output gradients co-vary between positions (the causal attentions
    before averaged the same early tokens), so the terms a key sums over queries add coherently: taken apart,
    the second and third layers' key projections' G was 0.72x and 0.81x the measurement; now within 15% (the
    issue's bar; the third reads 0.88x, where every row past the first layer is ~0.93x)."""
    for layer in (1, 2, 3):
        assert _log_ratio(report, f"model.layers.{layer}.self_attn.k_proj") == pytest.approx(0.0, abs=math.log(1.15))


def test_each_part_is_needed(monkeypatch):
    """Disabling one part at a time breaks the test that states it."""
    monkeypatch.setattr(attention, "_logit_rows", lambda node, x, ctx: (1.0, None))
    assert _log_ratio(_report(), "model.layers.0.self_attn.q_proj") < -0.15
    monkeypatch.undo()
    monkeypatch.setattr(merge, "_constant_overlap", lambda node, index, profile: 1.0)
    assert _rotated_half_of_keys(_report(), 0) > 0.3
    monkeypatch.undo()
    monkeypatch.setattr(attention, "_state_logit_product", lambda *args: None)
    assert _log_ratio(_report(), "model.layers.2.self_attn.k_proj") < -math.log(1.15)  # the deep keys' test fails


def _fused_projection_errors(name: str) -> list[float]:
    from zoo import STOCK

    module, inputs = next(m for m in STOCK if m.name == name).build()
    report = initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=4, batch=8))
    return [math.log(r.symbolic.G / r.measured.G) for r in report.layers if r.label.endswith("attn.c_attn")]


def test_a_split_fused_projection_gets_every_parts_gradient_profile(monkeypatch):
    """GPT-2 splits one fused projection into q, k and v. Its input's gradient profile over the tokens (and the
    covariance between them) must combine the three parts', each by the gradient it sends back: from the first
    part (q) alone, the values' (early tokens get most) was lost, and the first layers' c_attn G was 0.69x and
    0.82x the measurement. Every c_attn row within 15% now."""
    errors = _fused_projection_errors("gpt2")
    assert len(errors) == 4
    assert max(abs(e) for e in errors) < math.log(1.15), errors
    monkeypatch.setattr(symbolic, "_output_weights", lambda node, result: [(node.outputs[0], 1.0)])
    assert min(_fused_projection_errors("gpt2")) < -0.3


class _CausalAttention(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        for layer in (self.q, self.k, self.v, self.o):
            nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x):
        heads = lambda t: t.view(t.shape[0], t.shape[1], 2, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.o(out.transpose(1, 2).reshape(x.shape))


class _TwoBlocks(nn.Module):
    """Two pre-RMSNorm blocks of causal attention on a stream at 0.02: the second makes the first's output
    gradient uneven over the tokens."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.blocks = nn.ModuleList(_CausalAttention(d) for _ in range(2))
        self.norms = nn.ModuleList(nn.RMSNorm(d) for _ in range(2))
        self.head = nn.Linear(d, 8, bias=False)

    def forward(self, x):
        x = 0.02 * x
        for block, norm in zip(self.blocks, self.norms):
            x = x + block(norm(x))
        return self.head(x)


def test_without_a_values_kernel_the_rows_are_summed_without_a_matrix(monkeypatch):
    """Where the values have no kernel (past MAX_KERNEL_LENGTH positions, or the first causal attention) their
    deviations are the rule's own, (1 - S/K)(1 - 1/n_t), and rows and keys are summed in O(T), never as a T x T
    matrix (at a 32k context that would be 8 GB). The first block's values have none: taking that path there
    instead of the matrix of deviations must give the same gradients, row for row, while the second block's
    uneven output gradient makes the rows differ."""
    torch.manual_seed(0)
    model, x = _TwoBlocks().eval(), torch.randn(2, 64, 32)
    with_matrix = [r.symbolic.G for r in initcheck.analyze(model, x).layers]
    original = attention._values_deviation

    def only_with_a_kernel(values, rows, keys, ctx):
        axis = len(values.shape) - 2
        return original(values, rows, keys, ctx) if attention._kernel_on(ctx, values, axis) is not None else None

    monkeypatch.setattr(attention, "_values_deviation", only_with_a_kernel)
    summed = [r.symbolic.G for r in initcheck.analyze(model, x).layers]
    assert summed == pytest.approx(with_matrix, rel=1e-6)
    monkeypatch.setattr(attention, "_logit_rows", lambda node, x, ctx: (1.0, None))
    apart = [r.symbolic.G for r in initcheck.analyze(model, x).layers]
    assert max(abs(a / b - 1) for a, b in zip(apart, with_matrix)) > 0.05


def _query_errors(name: str) -> list[float]:
    from zoo import STOCK

    module, inputs = next(m for m in STOCK if m.name == name).build()
    report = initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=4, batch=8))
    return [math.log(r.symbolic.G / r.measured.G) for r in report.layers if r.label.endswith("attention.self.query")]


def test_a_querys_gradient_loses_the_keys_common_part_and_gains_their_coupling_to_the_values(monkeypatch):
    """Query t's gradient is scale * (1/n) sum_s k_s (v_s - vbar_t)^T do_t. The keys' part common to the row cancels
    (tr(P A P B) in place of the values' deviations alone: 0.73x on RoBERTa's first layer, measured with its
    measured matrices), and where keys and values are linear maps of one source, k_s (v_s - vbar_t)^T averages to
    W_k C W_v^T over the row instead of away (+20% there, measured). Taken apart (the scalar rule) RoBERTa's
    query rows were 1.34-1.39x the measurement; within 15% now."""
    errors = _query_errors("roberta")
    assert len(errors) == 4
    assert max(abs(e) for e in errors) < math.log(1.15), errors
    monkeypatch.setattr(attention, "_query_rows", lambda *args: None)
    assert min(_query_errors("roberta")) > 0.25


class _LongOne(nn.Module):
    def __init__(self, d: int = 128):
        super().__init__()
        self.attention, self.head = _CausalAttention(d), nn.Linear(d, 8, bias=False)

    def forward(self, x):
        return self.head(x + self.attention(x))


def _long_query_error() -> float:
    torch.manual_seed(0)
    report = initcheck.analyze(
        _LongOne().eval(), torch.randn(1, 300, 128), probe=ProbeOptions(device="cpu", seeds=2, batch=4)
    )
    return _log_ratio(report, "attention.q")


def test_over_a_long_context_the_coupling_dominates_a_querys_gradient(monkeypatch):
    """The coupled part of a query's gradient, W_k C W_v^T do_t, does not shrink with the row's length while the
    rest goes as 1/n_t: its share is about n_t tr(C^2)/tr(C)^2, n_t / d for independent features. 300 tokens of a
    128-wide causal attention (past the kernel length, all in O(T)): the query projection's G was 0.70x the
    measurement without it, within 15% with it."""
    assert _long_query_error() == pytest.approx(0.0, abs=math.log(1.15))
    monkeypatch.setattr(attention, "_query_rows", lambda *args: None)
    assert _long_query_error() < -0.3


def test_phi3s_queries_are_recognised_as_rotated_through_its_empty_unrotated_rest():
    """Phi-3 concatenates its rotated features with the unrotated rest, empty at partial_rotary_factor 1: that
    concatenation is a copy, and read as one it hid RoPE from the attention rules, so the queries' gradient was
    summed as if their cosine and sine halves were one signal (the query slice of the fused projection 1.6-1.9x
    the measurement). Each layer's query slice within 15% now."""
    from zoo import STOCK

    module, inputs = next(m for m in STOCK if m.name == "phi3").build()
    report = initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=4, batch=8), all_nodes=True)
    for layer in range(4):
        scope = f"model.layers.{layer}.self_attn"
        query = next(r for r in report.layers if r.label == scope and r.op == "slice")  # q, k, v in that order
        assert query.shape[-1] == 128 and query.measured is not None
        assert abs(math.log(query.symbolic.G / query.measured.G)) < math.log(1.15), layer


def test_two_keys_gradients_share_what_every_row_of_weights_sums_to():
    """Each row of attention weights sums to one, so the keys' gradients sum the queries' gradients, and two keys
    have in common, besides the queries' shared part, what two weights of one row have: (1 - sum p^2) / (n(n - 1))
    of each query's independent gradient. Without it a cross-attention whose output gradient shares nothing gave
    its values none either (0.001 of G, 0.5 measured), and T5's encoder, whose gradient comes through those
    values, had its self-attention values' G 0.65x and 0.78x the measurement. Within 15% now."""
    from zoo import STOCK

    module, inputs = next(m for m in STOCK if m.name == "t5").build()
    report = initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=4, batch=8))
    for block in (0, 1):
        assert abs(_log_ratio(report, f"encoder.block.{block}.layer.0.SelfAttention.v")) < math.log(1.15), block


class _PatchStack(nn.Module):
    """Patch embeddings (a conv from 48 values to 128 features, moved to (batch, tokens, features)), two residual
    MLP blocks and one attention over the 64 tokens."""

    def __init__(self, d: int = 128, blocks: int = 2, patch: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, d, patch, stride=patch)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
        return self.head((x + self.o(weights @ v)).mean(1))


def _patch_query_error() -> float:
    torch.manual_seed(0)
    report = initcheck.analyze(
        _PatchStack().eval(), torch.randn(1, 3, 32, 32), probe=ProbeOptions(device="cpu", seeds=4, batch=8)
    )
    return _log_ratio(report, "q")


def test_a_querys_coupling_reads_the_features_the_patch_embedding_and_the_mlps_correlate(monkeypatch):
    """The coupling W_k C W_v^T of a query's gradient grows with tr(C^2)/tr(C)^2 of the tokens' features. A patch
    embedding from 48 values fills 128 features unevenly (1/128 + 1/48, not 1/128); moved to (batch, tokens,
    features) by a transpose the pass had dropped that. Each residual MLP, nearly linear in the stream at init,
    adds its covariance with the stream, 2 w tr(C^2), w its linear part's energy over the stream's: counted as an
    independent branch, the stream looked less correlated block after block (ViT-B/16's deeper queries were
    0.72-0.85x). The query row within 15% now; 0.78x without the MLPs' coupling, 0.59x without the transpose."""
    assert _patch_query_error() == pytest.approx(0.0, abs=math.log(1.15))
    monkeypatch.setattr(dispersion, "_linear_share", lambda *args, **kwargs: 0.0)
    assert _patch_query_error() < -0.2
    monkeypatch.undo()
    monkeypatch.setattr(dispersion, "_moved_overlap", lambda *args: None)
    assert _patch_query_error() < -0.4
