"""The probe at scale: a prefix of the repeated stack, fewer samples per run, mixed precision; chosen to fit the
device's memory, and said in the report."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx_graphs import he_weights, relu_mlp
from torch import nn

import initcheck
from initcheck.cli import main
from initcheck.ir import Graph, Node, Value
from initcheck.moments import Estimate
from initcheck.options import ProbeOptions
from initcheck.probes import plan as plan_module
from initcheck.probes.plan import Footprint, ProbeTooLarge, plan_probe
from initcheck.report.model import LayerRow


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, width: int = 64, depth: int = 6):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, width)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _stack_and_input():
    torch.manual_seed(0)
    return Stack(), torch.randn(64, 64)


def _by_label(report):
    return {(r.label, r.op): r for r in report.layers}


def test_prefix_probe_measures_the_first_blocks_as_the_whole_run_does():
    model, x = _stack_and_input()
    options = dict(seeds=1, batch=64)  # one run: the same inputs in both probes
    whole = initcheck.analyze(model, x, probe=ProbeOptions(**options))
    prefix = initcheck.analyze(model, x, probe=ProbeOptions(**options, layers=2))
    assert any("the first 2 of 6 blocks of blocks" in n for n in prefix.probe["notes"])
    full_rows = _by_label(whole)
    measured_prefix = [r for r in prefix.layers if r.label.startswith(("blocks.0", "blocks.1"))]
    assert len(measured_prefix) >= 8
    for row in measured_prefix:  # the forward of the prefix is the same computation
        assert row.measured.K == pytest.approx(full_rows[row.label, row.op].measured.K, rel=1e-6)
    later = [r for r in prefix.layers if r.label.startswith(("blocks.2", "blocks.5", "head"))]
    assert later and all(r.measured is None for r in later)
    # the gradient starts where the run stops with the predicted energy, and the prefix carries it back as the
    # whole model does (the predictions of this stack are accurate: both within 15% of them)
    last = [r for r in measured_prefix if r.label.startswith("blocks.1")][-1]
    assert last.measured.G == pytest.approx(last.symbolic.G, rel=0.1)
    first_up = next(r for r in measured_prefix if r.label == "blocks.0.up")
    assert first_up.measured.G == pytest.approx(full_rows["blocks.0.up", first_up.op].measured.G, rel=0.15)


class MixingBlock(nn.Module):
    """A norm, a token-wise layer and a layer that reads the mean over the tokens: the latter's backward sums the
    tokens' gradients, so what it passes back depends on how much of that gradient the tokens have in common."""

    def __init__(self, width: int):
        super().__init__()
        self.norm, self.local, self.mix = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        h = self.norm(x)
        return x + self.local(h) + self.mix(h.mean(dim=1, keepdim=True))


class PooledStack(nn.Module):
    def __init__(self, width: int = 32, depth: int = 6):
        super().__init__()
        self.blocks = nn.ModuleList(MixingBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))  # a pooled head: every token of a sample gets the same gradient


def test_a_token_mean_broadcast_back_sums_the_gradient_the_tokens_share():
    """docs/theory.md §9: behind a pooled head every token of a sample gets the same gradient, and a layer added to
    every token sums their gradients coherently (n^2 of the shared part). One block: the mean's layer predicted
    within 3% of autograd (it was 1/T of it, 0.04x, with the tokens' gradients summed as independent)."""
    torch.manual_seed(0)
    model, x = PooledStack(depth=1), torch.randn(16, 24, 32)
    report = _by_label(initcheck.analyze(model, x, probe=ProbeOptions(seeds=1, batch=16)))
    for key in (("blocks.0.mix", "linear"), ("blocks.0.local", "linear")):
        row = report[key]
        assert row.symbolic.G == pytest.approx(row.measured.G, rel=0.1), key


def test_a_prefix_seeds_the_gradient_that_the_tokens_share():
    """The seed where a prefix stops carries the share of the predicted gradient the tokens have in common, so the
    blocks run pass it back as the whole model does: each row's measured G in a 2-of-6 prefix, relative to the
    whole run's, is what the prediction where the run stops is relative to it (1.16-1.29 against 1.24). With
    independent entries at every token (the seed before) the layers reading the tokens' mean got 1/T of it."""
    torch.manual_seed(0)
    model, x = PooledStack(), torch.randn(16, 24, 32)
    options = dict(seeds=1, batch=16)
    whole = _by_label(initcheck.analyze(model, x, probe=ProbeOptions(**options)))
    prefix = initcheck.analyze(model, x, probe=ProbeOptions(**options, layers=2))
    cut = next(r for r in prefix.layers if r.label == "blocks.1" and r.op == "add")
    seeded = cut.symbolic.G / whole["blocks.1", "add"].measured.G
    rows = [r for r in prefix.layers if r.label in ("blocks.0.local", "blocks.0.mix", "blocks.1.mix")]
    assert len(rows) == 3
    for row in rows:
        assert row.measured.G / whole[row.label, row.op].measured.G == pytest.approx(seeded, rel=0.1), row.label


def test_hf_decoder_prefix_and_its_verdict():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 128, (1, 32))
    report = initcheck.analyze(model, {"input_ids": ids}, probe=ProbeOptions(seeds=2, layers=2))
    measured = [r for r in report.layers if r.measured is not None]
    assert {r.label.split(".")[2] for r in measured if r.label.startswith("model.layers.")} == {"0", "1"}
    grads = [r for r in measured if r.label.startswith("model.layers.1") and r.measured.G is not None]
    assert grads, "the prefix's gradients are measured"
    assert not any(f.code == "IC403" for f in report.findings)


def _rows(labels: list[str]) -> list[LayerRow]:
    return [
        LayerRow(
            index=i,
            node=f"n{i}",
            scope=label,
            op="linear",
            source_op="linear",
            shape=[1, 8],
            fan_in=8,
            fan_out=8,
            weight_std=None,
            target_std=None,
            activation=None,
            symbolic=Estimate(0.0, 1.0, 1.0, 0.0),
            coherent=None,
            gain_log10=None,
            forward_log10=None,
            backward_log10=None,
            spread=0.0,
            uninformative=False,
            status="modeled",
            normalized_downstream=False,
        )
        for i, label in enumerate(labels)
    ]


def _chain(labels: list[str]) -> Graph:
    """One linear node per label, each reading the one before: what the plan needs of a graph."""
    values = [Value("x", shape=(1, 8), is_input=True)]
    nodes = []
    for i, label in enumerate(labels):
        out = Value(f"v{i}", shape=(1, 8))
        nodes.append(Node(f"n{i}", "linear", "linear", [values[-1]], [out], scope=label))
        values.append(out)
    return Graph(nodes=nodes, inputs=[values[0]], outputs=[values[-1]], values={v.name: v for v in values})


def test_the_plan_cuts_the_stack_to_fit_and_refuses_only_below_one_block():
    labels = [f"layers.{i}.proj" for i in range(8)] + ["head"]
    graph, rows = _chain(labels), _rows(labels)
    per_node = 1000
    predicted = {f"v{i}": 2.0 + i for i in range(9)}

    def plan(budget: int, layers=None, weights=0):
        footprint = Footprint(weights, [per_node] * len(labels), 1, budget)
        return plan_probe(graph, rows, ProbeOptions(layers=layers), footprint, False, predicted, can_cut=True)

    assert plan(10**9).cut is None
    fitted = plan(3500)  # three blocks' activations
    assert (fitted.cut, fitted.blocks) == ("layers.3", (3, 8))
    assert fitted.gradients == {"v2": 4.0}  # what the rest would read: the third block's output
    assert "first 3 of 8 blocks" in fitted.notes[0]
    assert plan(10**9, layers=5).blocks == (5, 8)
    assert plan(2500, layers=5).blocks == (2, 8)  # what fits wins over what was asked
    assert plan(10**9, layers=20).cut is None
    assert plan(3500, weights=1000).blocks == (2, 8)  # a device copy of the weights counts
    with pytest.raises(ProbeTooLarge, match="--probe-layers"):
        plan(900)


def test_the_plan_lowers_the_samples_per_run_where_the_batch_is_free():
    labels = ["a", "b"]
    graph, rows = _chain(labels), _rows(labels)

    def plan(budget: int):
        footprint = Footprint(0, [100, 100], 1, budget)
        return plan_probe(graph, rows, ProbeOptions(batch=16), footprint, True, {}, can_cut=False)

    assert plan(3200).run_batch == 16
    lowered = plan(900)
    assert lowered.run_batch == 4 and "4 sample(s) per run, not 16" in lowered.notes[0]
    with pytest.raises(ProbeTooLarge, match="lower --batch"):
        plan(100)


def _free_batch_mlp(path, width: int = 32):
    onnx.save(relu_mlp(he_weights(2, width), batch="N"), path)


def test_onnx_probe_runs_fewer_samples_per_run_and_keeps_the_count(tmp_path, monkeypatch):
    path = tmp_path / "mlp.onnx"
    _free_batch_mlp(path)
    whole = initcheck.analyze(path, probe=ProbeOptions(batch=16, seeds=2))
    activations = sum(plan_module.activation_bytes(_loaded(path)))
    from initcheck.frontends import Executable
    from initcheck.probes.onnx_probe import onnx_facts

    weights = 2 * onnx_facts(Executable(onnx_path=path), _loaded(path))[0]  # onnxruntime's and the torch form's
    monkeypatch.setattr(plan_module, "budget_bytes", lambda device: weights + activations * 4)
    lowered = initcheck.analyze(path, probe=ProbeOptions(batch=16, seeds=2))
    assert lowered.probe["samples"] == whole.probe["samples"] == 32
    assert lowered.probe["runs"] == 8 and whole.probe["runs"] == 2
    assert any("4 sample(s) per run, not 16" in n for n in lowered.probe["notes"])
    for a, b in zip(whole.layers, lowered.layers):
        assert b.measured.K == pytest.approx(a.measured.K, rel=0.25)


def _loaded(path) -> Graph:
    from initcheck.frontends import load_model

    return load_model(path)[0]


def test_a_probe_that_cannot_fit_is_ic403_with_the_way_out(monkeypatch):
    model, x = _stack_and_input()
    monkeypatch.setattr(plan_module, "budget_bytes", lambda device: 1)
    report = initcheck.analyze(model, x, probe=ProbeOptions(seeds=1))
    found = [f for f in report.findings if f.code == "IC403"]
    assert found and "--probe-layers" in found[0].message and report.probe is None


def test_mixed_precision_probe_measures_the_same_statistics():
    model, x = _stack_and_input()
    full = initcheck.analyze(model, x, probe=ProbeOptions(seeds=2, batch=64))
    mixed = initcheck.analyze(model, x, probe=ProbeOptions(seeds=2, batch=64, dtype="bfloat16"))
    assert any("bfloat16 autocast" in n for n in mixed.probe["notes"])
    ratios = [m.measured.K / f.measured.K for f, m in zip(full.layers, mixed.layers) if f.measured and f.measured.K]
    assert ratios and max(abs(r - 1) for r in ratios) < 0.02  # bf16 rounding averages out in K
    assert max(abs(r - 1) for r in ratios) > 0  # and it did run in bf16


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--probe-layers", "2"], "--probe-layers: only PyTorch models"),
        (["--probe-dtype", "bfloat16"], "--probe-dtype: ONNX files are probed as stored"),
        (["--probe-layers", "0"], "--probe-layers"),
        (["--no-probe", "--probe-layers", "2"], "--probe-layers: probe setting(s) given with --no-probe"),
    ],
)
def test_probe_scale_flags_that_cannot_act_are_one_line(flags, message, capsys):
    from conftest import SAMPLES

    code = main(["analyze", str(SAMPLES / "pre_ln_stack.onnx"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_probe_layers_on_a_model_without_a_stack_is_one_line(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 8),)), path)
    code = main(["analyze", str(path), "--probe-layers", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no repeated stack" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_prefix_and_mixed_precision_match_cpu():
    model, x = _stack_and_input()
    options = dict(seeds=1, batch=64, layers=2)
    cpu = initcheck.analyze(model, x, probe=ProbeOptions(device="cpu", **options))
    gpu = initcheck.analyze(model, x, probe=ProbeOptions(device="cuda", **options))
    assert gpu.probe["device"].startswith("cuda")
    pairs = [(c.measured, g.measured) for c, g in zip(cpu.layers, gpu.layers) if c.measured is not None]
    assert len(pairs) >= 8 and all(g is not None for _, g in pairs)
    assert [g.K for _, g in pairs] == pytest.approx([c.K for c, _ in pairs], rel=1e-3)
    assert [g.G for _, g in pairs] == pytest.approx([c.G for c, _ in pairs], rel=1e-3)
    mixed = initcheck.analyze(model, x, probe=ProbeOptions(device="cuda", seeds=1, batch=64, dtype="bfloat16"))
    ratios = [m.measured.K / c.measured.K for c, m in zip(cpu.layers, mixed.layers) if c.measured and c.measured.K]
    assert ratios and max(abs(r - 1) for r in ratios) < 0.02
