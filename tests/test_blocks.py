"""Repeated blocks: one table row per position in the block, with each number's range across the blocks (issue 16)."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from torch import nn

import initcheck
from initcheck.analysis.blocks import repeated_blocks
from initcheck.cli import main
from initcheck.report.table import make_console, render_table


def _gpt2(layers: int):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=layers, n_embd=64, n_head=4, vocab_size=200, n_positions=32, use_cache=False
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.GPT2LMHeadModel(config).eval(), {"input_ids": torch.randint(0, 200, (1, 16))}


def test_a_twelve_block_stack_is_one_group_with_ranges():
    model, inputs = _gpt2(12)
    report = initcheck.analyze(model, inputs)
    (group,) = report.blocks
    assert (group.prefix, group.first, group.last) == ("transformer.h", 0, 11)
    block_rows = {i for p in group.positions for i in p.rows}
    assert len(block_rows) == 12 * len(group.positions) and len(report.layers) == len(block_rows) + 4  # all rows kept
    for position in group.positions:
        rows = [report.layers[i] for i in position.rows]
        assert position.K == [min(r.symbolic.K for r in rows), max(r.symbolic.K for r in rows)]
        assert len({(re.sub(r"^transformer\.h\.\d+", "", r.label), r.op) for r in rows}) == 1  # one per block
    console = make_console("never")
    console.width = 220
    with console.capture() as captured:
        render_table(report, console)
    text = captured.get()
    assert "transformer.h.[0-11].attn.c_proj" in text and "×12" in text
    assert "transformer.h.5.attn.c_proj" not in text


def test_three_blocks_are_not_grouped_and_a_different_block_breaks_the_run():
    model, inputs = _gpt2(3)
    assert initcheck.analyze(model, inputs).blocks == []

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(6))
            self.layers[3].append(nn.Linear(32, 32))  # block 3 differs: runs 0-2 and 4-5, both too short

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    report = initcheck.analyze(Stack(), torch.randn(4, 32))
    assert repeated_blocks(report.layers) == [] and repeated_blocks(report.layers, least=3)[0].last == 2


def test_all_layers_keeps_one_row_per_layer(tmp_path, capsys):
    model, inputs = _gpt2(4)
    path = tmp_path / "gpt2.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (), inputs, strict=False), str(path))
    args = ["analyze", str(path), "--no-probe", "--format", "json"]
    main(args)
    grouped = json.loads(capsys.readouterr().out)
    main([*args, "--all-layers"])
    full = json.loads(capsys.readouterr().out)
    assert len(grouped["blocks"]) == 1 and full["blocks"] == []
    assert grouped["layers"] == full["layers"]
