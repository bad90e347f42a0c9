"""Files of Hugging Face and diffusers models as users write them: torch.export of the model itself, whose output is
the library's own container (CausalLMOutput..., UNet2DOutput), read without importing that library."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import initcheck


@dataclass
class Outputs:
    """An output container as libraries define them, registered with pytree under a serialized name."""

    logits: torch.Tensor


def _register_outputs() -> None:
    pytree.register_pytree_node(
        Outputs,
        lambda o: ([o.logits], ["logits"]),
        lambda values, keys: Outputs(*values),
        serialized_type_name="some_library.outputs.Outputs",
    )


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        return Outputs(self.b(torch.relu(self.a(x))))


def test_a_container_this_process_cannot_import_is_read_with_a_stand_in(tmp_path):
    """The file names 'some_library.outputs.Outputs', which is not registered when the file is analysed (as
    transformers' classes are not in the CLI's process): it loads, the probe runs, and afterwards the library
    can register its class under that name as usual."""
    _register_outputs()
    try:
        path = tmp_path / "tiny.pt2"
        torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(4, 32),)), str(path))
    finally:
        pytree._deregister_pytree_node(Outputs)
    report = initcheck.analyze(path, probe=True)
    assert [r.op for r in report.layers] == ["linear+relu", "linear"]
    assert all(r.measured is not None and r.measured.G is not None for r in report.layers)
    assert "IC403" not in {f.code for f in report.findings}
    assert "some_library.outputs.Outputs" not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE  # the stand-in released it


def test_hf_causal_lm_exported_as_is_analyses_from_the_command_line(tmp_path):
    """GPT-2 exported directly (its output a transformers CausalLMOutput): the CLI, which never imports
    transformers, loads it and probes it (it failed: 'Deserializing ... in pytree is not registered')."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64, use_cache=False)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    inputs = {"input_ids": torch.randint(0, 256, (1, 16))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (), inputs, strict=False)
    assert "CausalLMOutput" in str(program.call_spec.out_spec)
    path = tmp_path / "gpt2.pt2"
    torch.export.save(program, str(path))
    done = subprocess.run(
        [sys.executable, "-m", "initcheck", "analyze", str(path), "--format", "json", "--seeds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    report = report["models"][0] if "models" in report else report
    assert report["probe"] and "IC403" not in {f["code"] for f in report["findings"]}
    assert sum(1 for row in report["layers"] if row["measured_G"] is not None) > len(report["layers"]) // 2


def test_a_transformers_model_with_its_default_cache_is_analysed_and_left_as_it_was():
    """use_cache=True is transformers' default, and torch.export cannot put the cache in a graph: the cache is
    off while exporting (it failed with a one-line error asking for use_cache=False), the config restored."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=200
    )
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.config.use_cache is True
    report = initcheck.analyze(model, {"input_ids": torch.randint(0, 200, (1, 16))}, probe=True)
    assert report.probe and sum(r.measured is not None for r in report.layers) > len(report.layers) // 2
    assert model.config.use_cache is True
