"""The probe runs the model as the analysis reads it: dropout that the analysis reads as inactive runs as the
identity even in a train-mode export, active dropout draws the same masks on every run and is not cross-checked
between runtimes (they draw their own), and reports stay byte-identical."""

from __future__ import annotations

import json

import torch
from torch import nn

from initcheck.cli import main


class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(32, 32), nn.Dropout(0.5), nn.Linear(32, 8)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def _export(path, training: bool):
    torch.manual_seed(0)
    model = WithDropout().train(training)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(
        model,
        (torch.randn(4, 32),),
        str(path),
        dynamo=False,
        training=mode,
        do_constant_folding=False,
        input_names=["x"],
    )
    return path


def _json(path, capsys, *extra) -> tuple[int, dict, str]:
    code = main(["analyze", str(path), "--format", "json", "--seeds", "2", "--batch", "4", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out), out


def test_train_mode_dropout_export_gives_no_false_ic402_and_identical_reports(tmp_path, capsys):
    path = _export(tmp_path / "train.onnx", training=True)
    for extra in ((), ("--train",)):
        code, report, first = _json(path, capsys, *extra)
        assert not [f for f in report["findings"] if f["code"] == "IC402"], report["findings"]
        assert [r for r in report["layers"] if r.get("measured_K") is not None]
        _, _, second = _json(path, capsys, *extra)
        assert first == second  # same masks, same numbers


def test_torch_form_mod_matches_onnxruntime():
    """Mod in the torch form (issue 15 §5: graphs with Mod had no measured gradients): both sign conventions."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from initcheck.probes.onnx_torch import OPS

    for fmod, dtype, proto in (
        (0, np.int64, TensorProto.INT64),
        (1, np.float32, TensorProto.FLOAT),
        (1, np.int64, TensorProto.INT64),
    ):
        node = helper.make_node("Mod", ["a", "b"], ["y"], fmod=fmod)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("a", proto, [6]), helper.make_tensor_value_info("b", proto, [6])],
            [helper.make_tensor_value_info("y", proto, None)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        a, b = np.array([-7, 7, -5, 5, 9, -9]).astype(dtype), np.array([3, -3, 2, 2, -4, 4]).astype(dtype)
        expected = ort.InferenceSession(model.SerializeToString()).run(None, {"a": a, "b": b})[0]
        got = OPS["Mod"](node, [torch.tensor(a), torch.tensor(b)], {"fmod": fmod}).numpy()
        assert np.array_equal(expected, got), (fmod, dtype)
