"""`initcheck fix`: the findings' weight repairs applied to a copy, and the proof asserted on the numbers after."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from conftest import SAMPLES
from torch import nn

import initcheck
from initcheck.cli import main


def _fixed(name: str, tmp_path, **options):
    out = tmp_path / f"{name}_fixed.onnx"
    return initcheck.fix(SAMPLES / f"{name}.onnx", output=out, **options), out


def test_glorot_relu_mlp_gets_he_weights_and_its_signal_back(tmp_path):
    result, out = _fixed("relu_mlp_glorot", tmp_path)
    assert result.proof is not None and result.proof.passed
    assert [p.finding.code for p in result.plan.acted][:1] == ["IC102"]
    weighted = [r for r in result.after.layers if r.weight_std and r.target_std and not r.small_head]
    assert len(weighted) >= 10
    for row in weighted:  # every layer now at He's std sqrt(2/fan_in); the small output layer is left as chosen
        assert row.weight_std == pytest.approx(row.target_std, rel=0.02)
    before_last, after_last = (
        next(r for r in reversed(rep.layers) if not r.small_head) for rep in (result.before, result.after)
    )
    assert (
        before_last.symbolic.K < 1e-3 < 0.5 < after_last.symbolic.K
    )  # the body's last layer: 4 decades lost, ~1 after
    assert not [f for f in result.after.findings if f.code in ("IC102", "IC112") and f.severity != "info"]


def test_missing_attention_scale_is_folded_into_q(tmp_path):
    result, out = _fixed("attention_unscaled", tmp_path)
    assert result.proof.passed
    (scale,) = result.plan.acted[0].edits
    assert scale.layer == "q" and scale.factor == pytest.approx(1 / math.sqrt(32))
    q_before = next(r for r in result.before.layers if r.label == "q")
    q_after = next(r for r in result.after.layers if r.label == "q")
    assert q_after.weight_std == pytest.approx(q_before.weight_std / math.sqrt(32), rel=1e-4)
    assert not [f for f in result.after.findings if f.code == "IC504"]


def test_exploding_residual_branches_are_scaled(tmp_path):
    result, out = _fixed("residual_mlp", tmp_path)
    assert result.proof.passed
    planned = next(p for p in result.plan.acted if p.finding.code == "IC502")
    # every branch end but the last, which is also the network's output layer (kept as it is: a small output)
    assert [s.tensor for s in planned.edits] == [f"blocks.{i}.2.weight" for i in range(11)]
    assert "small output layer is left as it is" in planned.why
    growth = result.before.layers[-1].symbolic.K / result.after.layers[-1].symbolic.K
    assert growth > 5  # the stream no longer grows x(1+g) per block


def test_the_input_is_never_written_and_refusals_are_one_line(tmp_path, capsys):
    source = SAMPLES / "relu_mlp_glorot.onnx"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    for args, message in [
        (["-o", str(source)], "never writes its input"),
        (["-o", str(tmp_path / "x.pt2")], "keeps the input's form"),
        ([], "give -o FILE"),
    ]:
        assert main(["fix", str(source), "--no-probe", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{}")
    assert main(["fix", str(index), "-o", str(tmp_path / "w2.safetensors.index.json"), "--no-probe"]) == 2
    assert "for sharded checkpoints, apply the printed init code" in capsys.readouterr().err
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest


def test_dry_run_writes_nothing_and_prints_the_plan(tmp_path, capsys):
    out = tmp_path / "never.onnx"
    code = main(["fix", str(SAMPLES / "relu_mlp_glorot.onnx"), "-o", str(out), "--dry-run", "--no-probe"])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "multiply 0.weight (layer '0') by 1.43" in printed
    assert "torch.nn.init.normal_(model.get_parameter('0.weight'), std=0.144" in printed


def test_only_skip_and_declared_findings_are_left_alone(tmp_path):
    result, _ = _fixed("relu_mlp_glorot", tmp_path, skip={"IC102"}, dry_run=True)
    left = {(p.finding.code, p.finding.severity): p.why for p in result.plan.left}
    assert left["IC102", "error"] == "--skip" and [p.finding.code for p in result.plan.acted] == ["IC112", "IC512"]
    result, _ = _fixed("relu_mlp_glorot", tmp_path, only={"IC505"}, dry_run=True)
    assert not result.plan.edits and [p.finding.code for p in result.plan.unfixable] == ["IC505"]
    config = tmp_path / ".initcheck.yaml"
    config.write_text(
        "deviations:\n"
        + "".join(f"  - code: {code}\n    reason: a deliberately quiet stack\n" for code in ("IC102", "IC112", "IC512"))
    )
    result, _ = _fixed("relu_mlp_glorot", tmp_path, config=config, dry_run=True)
    assert not result.plan.edits
    assert any("declared in the configuration" in p.why for p in result.plan.left)


def test_unfixable_findings_say_why(tmp_path):
    result, _ = _fixed("residual_overcorrected", tmp_path, dry_run=True)
    why = {p.finding.code: p.why for p in result.plan.unfixable}
    assert "constant of the graph" in why["IC503"]


def test_live_gpt2_without_its_residual_scaling_gets_it_back():
    from zoo import gpt2

    model, inputs = gpt2(layers=12, unscaled_residual=True)()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = initcheck.fix(model, inputs)
    assert result.proof.passed and not [f for f in result.after.findings if f.code == "IC516" and f.severity != "info"]
    planned = next(p for p in result.plan.acted if p.finding.code == "IC516")
    assert {s.tensor for s in planned.edits} == {
        f"transformer.h.{i}.{part}.c_proj.weight" for i in range(12) for part in ("attn", "mlp")
    }
    factor = planned.edits[0].factor
    repaired = result.model.state_dict()
    name = "transformer.h.3.mlp.c_proj.weight"
    assert torch.allclose(repaired[name], original[name] * factor)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the user's model untouched
    assert any("get_parameter('transformer.h.0.attn.c_proj.weight').data.mul_" in line for line in result.code)


def test_pt2_is_written_as_pt2(tmp_path):
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        linear = nn.Linear(128, 128)
        nn.init.normal_(linear.weight, std=0.5 / math.sqrt(128))  # a quarter of He's variance: K shrinks 8x a layer
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers).eval()
    source = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(4, 128),)), source)
    out = tmp_path / "mlp_fixed.pt2"
    assert main(["fix", str(source), "-o", str(out), "--no-probe"]) == 0
    after = initcheck.analyze(out)
    assert not [f for f in after.findings if f.code == "IC102" and f.severity != "info"]
    for row in (r for r in after.layers if r.weight_std and r.target_std and not r.small_head):
        assert row.weight_std == pytest.approx(row.target_std, rel=0.03)


@pytest.mark.parametrize(
    "name, codes",
    [
        ("relu_mlp_glorot", {"IC102", "IC112", "IC512"}),
        ("tanh_mlp_glorot", {"IC102", "IC112", "IC512"}),
        ("attention_unscaled", {"IC504"}),
        ("residual_mlp", {"IC502"}),
        ("inception_unscaled", {"IC508"}),
        ("mean_weights", {"IC510"}),
        ("post_ln_bias_heavy", {"IC511"}),
    ],
)
def test_every_fixable_sample_is_fixed_and_proven(name, codes, tmp_path):
    result, _ = _fixed(name, tmp_path)
    assert {p.finding.code for p in result.plan.acted} == codes
    assert result.proof.passed and {o.finding.code for o in result.proof.outcomes} == codes
    assert all(o.after is None for o in result.proof.outcomes)


@pytest.mark.parametrize(
    "name, code, reason",
    [
        ("dcgan_generator", "IC501", "kernel divisible by the stride"),
        ("strided_encoder_k3", "IC515", "kernel divisible by the stride"),
        ("residual_overcorrected", "IC503", "constant of the graph"),
        ("collapse_chain", "IC513", "a normalisation"),
        ("concat_unbalanced", "IC509", "no weighted layer"),
        ("lstm", "IC506", "forget-gate"),
    ],
)
def test_unfixable_samples_say_what_only_a_model_change_does(name, code, reason, tmp_path):
    result, _ = _fixed(name, tmp_path, dry_run=True)
    assert any(p.finding.code == code and reason in p.why for p in result.plan.unfixable)


def test_no_sample_finding_is_left_without_a_plan(tmp_path):
    """Every warning or error of every bundled sample is either repaired or says why it cannot be."""
    for path in sorted(SAMPLES.glob("*.onnx")):
        result = initcheck.fix(path, dry_run=True)
        for planned in result.plan.unfixable:
            assert planned.why and planned.why != "no automatic repair yet", (path.name, planned.finding.code)


def test_a_mean_is_removed_and_a_dominant_bias_zeroed(tmp_path):
    result, out = _fixed("mean_weights", tmp_path)
    layer = result.plan.acted[0].edits[0].layer
    row = next(r for r in result.after.layers if r.label == layer)
    weight = next(r for r in result.before.layers if r.label == layer)
    assert row.weight_std < weight.weight_std  # the mean's share is gone from E[W^2]
    import onnx
    from onnx import numpy_helper

    tensors = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert abs(float(tensors[result.plan.acted[0].edits[0].tensor].mean())) < 1e-6
    result, out = _fixed("post_ln_bias_heavy", tmp_path)
    tensors = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    biases = [s.tensor for s in result.plan.acted[0].edits]
    assert biases and all(float(abs(tensors[b]).max()) == 0.0 for b in biases)


def test_a_zero_norm_scale_is_reset_before_the_scales_are_planned():
    """Zero gammas on the main path (IC102 -inf) are set to 1 first; the gradient findings measured on the
    silenced model are planned again on the model as the reset leaves it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[m for _ in range(6) for m in (nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU())], nn.Linear(64, 8)
    ).eval()
    with torch.no_grad():
        model[1].weight.zero_()
    result = initcheck.fix(model, torch.randn(16, 64))
    reset = next(p for p in result.plan.acted if p.finding.code == "IC102")
    assert [(e.tensor, e.how, e.value) for e in reset.edits] == [("1.weight", "fill", 1.0)]
    assert torch.equal(result.model[1].weight, torch.ones(64)) and torch.equal(model[1].weight, torch.zeros(64))
    assert result.proof.passed


def test_sub_pixel_conv_gets_icnr_when_asked(tmp_path):
    """IC514 is information (left alone by default); named in --only, the conv gets ICNR: every sub-pixel kernel of
    an output channel equal, coherence 1, the same std."""
    result, out = _fixed("subpixel_random", tmp_path)
    assert not result.plan.edits and any("--only" in p.why for p in result.plan.left if p.finding.code == "IC514")
    result, out = _fixed("subpixel_random", tmp_path, only={"IC514"})
    assert result.proof.passed and not [f for f in result.after.findings if f.code == "IC514"]
    (edit,) = result.plan.edits
    import onnx
    from onnx import numpy_helper

    weight = next(numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer if t.name == edit.tensor)
    phases = int(edit.value) ** 2
    groups = weight.reshape(weight.shape[0] // phases, phases, -1)
    assert all((g == g[0]).all() for g in groups)  # channel c r^2 + phase: one kernel per c
    assert float(weight.std()) == pytest.approx(edit.std, rel=0.15)


def test_a_fix_that_does_not_hold_says_failed_and_exits_1(tmp_path, capsys):
    """The LSTM sample's head is rescaled by sqrt(3) (PyTorch's default init), but the signal was lost in the LSTM
    itself, whose gates no weight scale fixes: the collapse shows up there, and the proof fails."""
    code = main(["fix", str(SAMPLES / "lstm.onnx"), "-o", str(tmp_path / "lstm_fixed.onnx"), "--no-probe"])
    printed = capsys.readouterr().out
    assert code == 1 and "proof FAILED" in printed and "NEW IC102" in printed


_FACTORY = """import torch
from torch import nn


def make():
    layers = []
    for _ in range(12):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 8))
"""


@pytest.mark.parametrize("form", ["safetensors", "torch.save"])
def test_a_checkpoint_is_written_in_its_own_format(form, tmp_path, monkeypatch, capsys):
    (tmp_path / "fixfactory.py").write_text(_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import importlib

    model = importlib.import_module("fixfactory").make()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.5 / math.sqrt(64))  # a quarter of He's variance
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as DDP saves it
    if form == "safetensors":
        from safetensors.torch import save_file

        source, out = tmp_path / "w.safetensors", tmp_path / "fixed.safetensors"
        save_file(state, str(source))
    else:
        source, out = tmp_path / "w.pt", tmp_path / "fixed.pt"
        torch.save({"model": state, "step": 7}, source)
    code = main(
        ["fix", str(source), "-o", str(out), "--arch", "fixfactory:make", "--input", "input=4x64", "--no-probe"]
    )
    assert code == 0, capsys.readouterr()
    if form == "safetensors":
        from safetensors.torch import load_file

        fixed = load_file(str(out))
    else:
        saved = torch.load(out, weights_only=True)
        assert saved["step"] == 7  # the rest of the checkpoint kept
        fixed = saved["model"]
    assert set(fixed) == set(state)  # the file's own names, prefix included
    assert float(fixed["module.0.weight"].std()) == pytest.approx(math.sqrt(2 / 64), rel=0.05)


class _Merge(nn.Module):
    """Two He branches concatenated into a layer initialised for half its real fan-in: forward gain x2 (IC509)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.merge = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(128, 64)
        for layer in (self.a, self.b):
            nn.init.normal_(layer.weight, std=math.sqrt(2 / 64))
        nn.init.normal_(self.merge.weight, std=math.sqrt(1 / 64))

    def forward(self, x):
        return self.merge(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=-1))


def test_a_concat_fan_in_shift_is_rescaled_when_asked():
    torch.manual_seed(0)
    model = _Merge().eval()
    result = initcheck.fix(model, torch.randn(32, 64), only={"IC509"})
    (planned,) = result.plan.acted
    (edit,) = planned.edits
    gain = planned.finding.details["forward_gain"]
    assert edit.tensor == "merge.weight" and edit.factor == pytest.approx(gain**-0.5)
    assert result.proof.passed
    # the forward gain is back to 1; the backward gain per input element moves the other way (the finding's own
    # fix says so: one factor cannot keep both), so the information stays, with its new numbers
    after = [f for f in result.after.findings if f.code == "IC509"]
    assert all(f.details["forward_gain"] == pytest.approx(1.0, rel=0.05) for f in after)


class _ReluRNN(nn.Module):
    """A ReLU RNN whose orthogonal W_hh has gain 2: the gradient grows x2 per step (chi = g^2 / 2)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(32, 64, batch_first=True, nonlinearity="relu")
        self.head = nn.Linear(64, 8)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=2.0)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("route", ["module", "onnx"])
def test_an_exploding_recurrence_gets_its_w_hh_scaled(route, tmp_path):
    torch.manual_seed(0)
    model, x = _ReluRNN().eval(), torch.randn(4, 48, 32)
    if route == "module":
        result = initcheck.fix(model, x)
    else:
        path = tmp_path / "rnn.onnx"
        torch.onnx.export(model, (x,), str(path), input_names=["x"], dynamo=False, opset_version=17)
        result = initcheck.fix(path, output=tmp_path / "rnn_fixed.onnx")
    planned = next(p for p in result.plan.acted if p.finding.code == "IC506")
    (edit,) = planned.edits
    chi = planned.finding.details["chi"]
    assert chi == pytest.approx(2.0, rel=0.05) and edit.factor == pytest.approx(chi**-0.5)
    assert result.proof.passed and not [f for f in result.after.findings if f.code == "IC506"]
    if route == "module":
        assert edit.tensor == "rnn.weight_hh_l0"
        assert torch.allclose(result.model.rnn.weight_hh_l0, model.rnn.weight_hh_l0 * edit.factor)


def test_a_constant_weight_is_drawn_afresh_at_its_target_std(tmp_path):
    """IC202: every entry of one layer's weight equal. The fix redraws it (seeded by its name) at the layer's
    g/sqrt(fan_in); the file's other tensors are untouched."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx_graphs import he_weights, relu_mlp

    width = 64
    weights = he_weights(4, width)
    weights[1] = np.full((width, width), 0.05, np.float32)
    source, out = tmp_path / "constant.onnx", tmp_path / "fixed.onnx"
    onnx.save(relu_mlp(weights), source)
    result = initcheck.fix(source, output=out)
    planned = next(p for p in result.plan.acted if p.finding.code == "IC202")
    (edit,) = planned.edits
    assert (edit.tensor, edit.how) == ("w1", "normal") and edit.value == pytest.approx(math.sqrt(2 / width))
    tensors = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert float(tensors["w1"].std()) == pytest.approx(math.sqrt(2 / width), rel=0.05)
    assert np.array_equal(tensors["w0"], weights[0])
    assert result.proof.passed and not [f for f in result.after.findings if f.code == "IC202"]


def test_an_output_that_cannot_be_written_is_one_line_and_nothing_is_left(tmp_path, capsys):
    source = SAMPLES / "relu_mlp_glorot.onnx"
    code = main(["fix", str(source), "-o", str(tmp_path / "missing" / "fixed.onnx"), "--no-probe"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "folder" in err and "does not exist" in err and len(err.splitlines()) == 1
    assert main(["fix", str(source), "-o", str(tmp_path / "fixed.onnx"), "--no-probe"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx"]  # no temporary file left beside it
