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


def _onnxruntime_and_torch_form(node, feeds: dict, constants: dict, opset: int = 17):
    """One node run by onnxruntime (the constants as initializers) and by the probe's torch form."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from initcheck.probes.onnx_torch import run_node

    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [
            helper.make_tensor_value_info(
                node.output[0], helper.np_dtype_to_tensor_dtype(next(iter(feeds.values())).dtype), None
            )
        ],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    expected = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    values = {**feeds, **constants}
    got = run_node(node, [torch.tensor(np.asarray(values[n])) if n else None for n in node.input], opset)
    return expected, got.numpy()


def test_torch_form_backward_slices_and_gather_nd_match_onnxruntime():
    """Negative Slice steps (a reversed sequence, as the dynamo exporter writes a bidirectional RNN) and GatherND
    (Llama through the dynamo exporter) had no torch form: the probe measured no gradients there."""
    import numpy as np
    from onnx import helper

    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    for start, end, step in ((-1, -100, -1), (4, 0, -2), (10, -10, -1), (3, 1, -1), (0, 7, 2)):
        node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])
        constants = {"s": [start], "e": [end], "a": [1], "st": [step]}
        expected, got = _onnxruntime_and_torch_form(node, {"x": x}, {k: np.array(v) for k, v in constants.items()})
        assert expected.shape == got.shape and np.allclose(expected, got), (start, end, step)
    data = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    for batch_dims, indices in ((0, [[0, 1], [1, 2]]), (1, [[1], [2]]), (0, [[[1, -1, 2]]])):
        node = helper.make_node("GatherND", ["d", "i"], ["y"], batch_dims=batch_dims)
        expected, got = _onnxruntime_and_torch_form(node, {"d": data}, {"i": np.array(indices)})
        assert expected.shape == got.shape and np.allclose(expected, got), batch_dims
