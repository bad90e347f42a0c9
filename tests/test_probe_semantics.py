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
    torch.onnx.export(model, (torch.randn(4, 32),), str(path), dynamo=False, training=mode,
                      do_constant_folding=False, input_names=["x"])
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
