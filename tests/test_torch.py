"""PyTorch models in every form: .pt2, TorchScript, state dict + --arch, pickles, live modules."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import textwrap

import pytest
import torch
from architectures import ARCHITECTURES
from conftest import SAMPLES
from torch import nn

import initcheck
from initcheck.cli import main
from initcheck.errors import InitcheckError

spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
make_samples = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_samples)


def _model(name):
    torch.manual_seed(0)
    if name in ARCHITECTURES:
        factory, args = ARCHITECTURES[name]
        return factory().eval(), args()
    model, args, _ = make_samples.samples()[name]
    return model.train(name in make_samples.TRAINING_MODE), args


def _onnx(model, args, path):
    logging.disable(logging.WARNING)
    try:
        names = list(model.forward.__code__.co_varnames[1 : 1 + len(args)])
        mode = torch.onnx.TrainingMode.TRAINING if model.training else torch.onnx.TrainingMode.EVAL
        # do_constant_folding=False keeps eval-mode BatchNorm as its own node instead of folding it into the conv
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            training=mode,
            do_constant_folding=False,
            input_names=names,
        )
    finally:
        logging.disable(logging.NOTSET)
    return path


def weighted(report):
    return [(r.scope, r.symbolic.K) for r in report.layers if r.fan_in]


def gradients(report):
    return [r.symbolic.G or 0.0 for r in report.layers if r.fan_in]


MODELS = [
    "resnet",
    "densenet",
    "mobilenet",
    "vgg",
    "gpt2",
    "bert",
    "t5",
    "vit",
    "unet_block",
    "dcgan_generator",
    "lstm",
    "prenorm_transformer",
    "residual_mlp",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_onnx_pt2_and_live_module_give_the_same_table(name, tmp_path):
    """Same layers, same scopes, same second moments and gradients within 1%, whichever form the model comes in
    (the per-axis profiles of docs/theory.md §15 need the select's index and the transposes' permutation, which
    every frontend records)."""
    model, args = _model(name)
    via_onnx = initcheck.analyze(_onnx(model, args, tmp_path / "m.onnx"), training=model.training)
    program = torch.export.export(model, args)
    torch.export.save(program, str(tmp_path / "m.pt2"))
    via_pt2 = initcheck.analyze(tmp_path / "m.pt2", training=model.training)
    via_module = initcheck.analyze(model, args)
    for other in (via_pt2, via_module):
        a, b = weighted(via_onnx), weighted(other)
        assert [s for s, _ in a] == [s for s, _ in b]
        assert [k for _, k in a] == pytest.approx([k for _, k in b], rel=0.01)
        assert gradients(via_onnx) == pytest.approx(gradients(other), rel=0.01)
        assert other.coverage.unsupported == {}


class Net(nn.Module):
    def __init__(self, width: int = 32, init_std: float | None = None):
        super().__init__()
        self.embed = nn.Embedding(50, width)
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.norm = nn.BatchNorm1d(16)
        if init_std is not None:
            for m in self.body:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, init_std)

    def forward(self, input_ids):
        return self.norm(self.body(self.embed(input_ids)))


def write_factory(tmp_path, monkeypatch, body: str = "return Net()"):
    (tmp_path / "zoo.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SAMPLES.parent / "tests")!r})
        from test_torch import Net

        def make():
            {body}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "zoo", raising=False)  # each test writes its own zoo.py


def cli(args, capsys, monkeypatch):
    monkeypatch.delenv("INITCHECK_DEBUG", raising=False)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err):
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("initcheck: error:"), err


@pytest.mark.parametrize("layout", ["plain", "nested", "ddp", "safetensors"])
def test_state_dict_with_arch(layout, tmp_path, capsys, monkeypatch):
    write_factory(tmp_path, monkeypatch)
    torch.manual_seed(1)
    state = Net().state_dict()
    path = tmp_path / ("weights.safetensors" if layout == "safetensors" else "weights.pt")
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif layout == "nested":
        torch.save({"epoch": 3, "model": state, "optimizer": {"lr": 0.1}}, path)
    elif layout == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    code, out, err = cli(
        ["analyze", path, "--arch", "zoo:make", "--input", "input_ids=8x16", "--format", "json"], capsys, monkeypatch
    )
    assert code in (0, 1), err
    report = json.loads(out)
    assert report["layers"][0]["op"] == "embedding" and report["coverage"]["unsupported"] == {}
    reference = Net()
    reference.load_state_dict(state)
    expected = initcheck.analyze(reference.eval(), torch.randint(0, 50, (8, 16)))  # files: eval unless --train
    assert [r["second_moment"] for r in report["layers"]] == pytest.approx([r.symbolic.K for r in expected.layers])


def test_state_dict_errors(tmp_path, capsys, monkeypatch):
    write_factory(tmp_path, monkeypatch)
    state = Net().state_dict()
    torch.save(state, tmp_path / "w.pt")
    code, _, err = cli(["analyze", tmp_path / "w.pt", "--input", "input_ids=8x16"], capsys, monkeypatch)
    one_line(code, err)
    assert "--arch" in err
    broken = dict(state)
    broken.pop("body.0.weight")
    broken["head.weight"] = torch.zeros(3)
    torch.save(broken, tmp_path / "broken.pt")
    code, _, err = cli(
        ["analyze", tmp_path / "broken.pt", "--arch", "zoo:make", "--input", "input_ids=8x16"], capsys, monkeypatch
    )
    one_line(code, err)
    assert "missing 1 key(s): body.0.weight" in err and "unexpected 1 key(s): head.weight" in err
    for arch in ("zoo:nothing", "nozoo:make", "zoo"):
        one_line(
            *cli(["analyze", tmp_path / "w.pt", "--arch", arch, "--input", "input_ids=8x16"], capsys, monkeypatch)[::2]
        )


def test_factory_that_raises(tmp_path, capsys, monkeypatch):
    write_factory(tmp_path, monkeypatch, body="raise RuntimeError('no GPU here')")
    torch.save(Net().state_dict(), tmp_path / "w.pt")
    code, _, err = cli(
        ["analyze", tmp_path / "w.pt", "--arch", "zoo:make", "--input", "input_ids=8x16"], capsys, monkeypatch
    )
    one_line(code, err)
    assert "factory raised RuntimeError: no GPU here" in err


def test_malicious_pickle_is_never_executed_without_trust(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    code, _, err = cli(["analyze", tmp_path / "evil.pt", "--arch", "zoo:make"], capsys, monkeypatch)
    one_line(code, err)
    assert "--trust-pickle" in err and not marker.exists()


def test_whole_pickled_module_needs_trust(tmp_path, capsys, monkeypatch):
    torch.save(Net(), tmp_path / "full.pt")
    code, _, err = cli(["analyze", tmp_path / "full.pt", "--input", "input_ids=8x16"], capsys, monkeypatch)
    one_line(code, err)
    assert "--trust-pickle" in err
    code, out, err = cli(
        ["analyze", tmp_path / "full.pt", "--input", "input_ids=8x16", "--trust-pickle"], capsys, monkeypatch
    )
    assert code in (0, 1), err


def test_torchscript_archive(tmp_path, capsys, monkeypatch):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    code, _, err = cli(["analyze", tmp_path / "model.pt"], capsys, monkeypatch)
    one_line(code, err)
    assert "--input" in err
    code, out, err = cli(
        ["analyze", tmp_path / "model.pt", "--input", "input=1x3x16x16", "--format", "json"], capsys, monkeypatch
    )
    assert code in (0, 1), err
    direct = initcheck.analyze(model, torch.randn(1, 3, 16, 16))
    assert [r["second_moment"] for r in json.loads(out)["layers"]] == pytest.approx(
        [r.symbolic.K for r in direct.layers], rel=1e-6
    )


def test_export_failure_is_one_line_with_advice():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x.nonzero().float().sum() * x

    with pytest.raises(InitcheckError, match="torch.export failed.*ONNX"):
        initcheck.analyze(DataDependent(), torch.randn(4, 4))


def test_corrupt_pt2(tmp_path, capsys, monkeypatch):
    program = torch.export.export(nn.Linear(4, 4), (torch.randn(2, 4),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    data = (tmp_path / "m.pt2").read_bytes()
    (tmp_path / "bad.pt2").write_bytes(data[: len(data) // 3])
    one_line(*cli(["analyze", tmp_path / "bad.pt2"], capsys, monkeypatch)[::2])


def test_live_module_is_left_as_found():
    model = Net()
    model.train()
    model.body[0].weight.requires_grad_(False)
    ids = torch.randint(0, 50, (8, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    hooks = len(model._forward_hooks) + sum(len(m._forward_hooks) for m in model.modules())
    report = initcheck.analyze(model, ids)
    assert report.mode == "train"
    assert model.training and not model.body[0].weight.requires_grad and model.body[2].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert hooks == len(model._forward_hooks) + sum(len(m._forward_hooks) for m in model.modules())


def test_check_raises_on_findings_and_passes_healthy_models():
    torch.manual_seed(3)
    bad = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.ReLU())])  # PyTorch default init
    with pytest.raises(initcheck.InitcheckFailed, match="IC102"):
        initcheck.check(bad, torch.randn(8, 64))
    good = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.ReLU())])
    for m in good:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    assert initcheck.check(good, torch.randn(8, 64)).worst_severity() in (None, "info")


def test_dict_and_tuple_inputs_in_the_api():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model = TwoInputs()
    by_tuple = initcheck.analyze(model, (torch.randn(4, 8), torch.randn(4, 8)))
    by_dict = initcheck.analyze(model, {"x": torch.randn(4, 8), "y": torch.randn(4, 8)})
    assert weighted(by_tuple) == weighted(by_dict)


def test_token_ids_are_valid_for_the_embedding(tmp_path, capsys, monkeypatch):
    """A GPT-2 state dict from the CLI: integer ids are drawn below the vocabulary size."""
    write_factory(
        tmp_path,
        monkeypatch,
        body=(
            "import torch\n"
            "            from architectures import gpt2\n"
            "            torch.manual_seed(0)\n"
            "            return gpt2()"
        ),
    )
    torch.manual_seed(0)
    torch.save(ARCHITECTURES["gpt2"][0]().state_dict(), tmp_path / "gpt2.bin")
    code, out, err = cli(
        [
            "analyze",
            tmp_path / "gpt2.bin",
            "--arch",
            "zoo:make",
            "--input",
            "input_ids=1x16",
            "--input",
            "attention_mask=1x16",
            "--format",
            "json",
        ],
        capsys,
        monkeypatch,
    )
    assert code in (0, 1), err
    assert json.loads(out)["coverage"]["unsupported"] == {}


class KitchenSink(nn.Module):
    """One module using the ATen families the frontend must map (issue 3's list, and unflatten, which attention
    code uses to split heads)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(4, 16, 3, padding=1)
        self.gn, self.inorm = nn.GroupNorm(4, 16), nn.InstanceNorm2d(16, affine=True)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.shuffle_conv = nn.Conv2d(8, 32, 3, padding=1)
        self.head = nn.Linear(8, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.prelu = nn.PReLU(8)

    def forward(self, x):
        h = nn.functional.hardswish(self.gn(self.conv(x)))
        h = nn.functional.leaky_relu(self.inorm(h), 0.1)
        a, b = h.chunk(2, dim=1)
        h = torch.cat([nn.functional.max_pool2d(a, 2), nn.functional.adaptive_avg_pool2d(b, (4, 4))], dim=1)
        h = nn.functional.interpolate(self.up(h), scale_factor=2, mode="bilinear", align_corners=False)
        h = nn.functional.pixel_shuffle(torch.tanh(self.shuffle_conv(h)), 2)  # (B, 8, 32, 32)
        seq = nn.functional.adaptive_max_pool2d(self.prelu(h), (1, 8)).flatten(2).transpose(1, 2)  # (B, 8, 8)
        seq = torch.stack([seq, seq * 0.5], dim=0).sum(0)
        out, _ = self.gru(self.head(seq))
        out = out.unflatten(2, (2, 4)).flatten(2)
        scores = torch.baddbmm(torch.zeros(out.shape[0], 8, 8), out, out.transpose(1, 2), alpha=0.3)
        return torch.softmax(scores, -1) @ out


def test_aten_families_are_all_modeled_and_match_onnx(tmp_path):
    model = KitchenSink().eval()
    x = torch.randn(2, 4, 8, 8)
    report = initcheck.analyze(model, x)
    assert report.coverage.unsupported == {}
    via_onnx = initcheck.analyze(_onnx(model, (x,), tmp_path / "sink.onnx"))
    assert via_onnx.coverage.unsupported == {}
    a, b = weighted(via_onnx), weighted(report)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [k for _, k in a] == pytest.approx([k for _, k in b], rel=0.01)
