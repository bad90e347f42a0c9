"""Safetensors checkpoints (one file, or shards and their index JSON) streamed into a meta-device build of the
--arch model when no probe runs: the same table as loading them (issue 16)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import initcheck
from initcheck.cli import main

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

FACTORY = """import transformers


def make():
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=500, max_position_embeddings=64, use_cache=False)
    return transformers.LlamaForCausalLM(config)
"""


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A small Llama's factory module, its weights in one file and in two shards with an index."""
    (tmp_path / "tiny_llama.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("tiny_llama", None)
    import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama.make().eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    keys = sorted(state)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, part in shards.items():
        safetensors_torch.save_file({k: state[k] for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tmp_path, model


def test_streamed_checkpoints_give_the_table_of_the_loaded_model(checkpoint):
    folder, model = checkpoint
    live = initcheck.analyze(model, {"input_ids": torch.randint(0, 500, (1, 32))})
    for name in ("model.safetensors", "model.safetensors.index.json"):
        report = initcheck.analyze(folder / name, {"input_ids": ((1, 32), "int64")}, arch="tiny_llama:make")
        assert any("one tensor at a time" in n for n in report.notes)
        assert [(r.label, r.op) for r in report.layers] == [(r.label, r.op) for r in live.layers]
        for a, b in zip(report.layers, live.layers):
            assert a.symbolic.K == pytest.approx(b.symbolic.K, rel=1e-6) and a.weight_std == b.weight_std
        assert sorted((f.code, f.severity) for f in report.findings) == sorted(
            (f.code, f.severity) for f in live.findings
        )


def test_with_the_probe_the_shards_are_loaded_and_run(checkpoint):
    folder, _ = checkpoint
    report = initcheck.analyze(
        folder / "model.safetensors.index.json", {"input_ids": ((1, 32), "int64")}, arch="tiny_llama:make", probe=True
    )
    measured = [r for r in report.layers if r.measured is not None and r.measured.G is not None]
    assert report.probe and len(measured) > len(report.layers) // 2
    assert "IC403" not in {f.code for f in report.findings}


@pytest.mark.parametrize(
    "index,refused",
    [
        ({"weight_map": {"model.norm.weight": "../outside.safetensors"}}, "outside its folder"),
        ({"weight_map": {"model.norm.weight": "gone.safetensors"}}, "is missing"),
        ({"no": "map"}, "not a safetensors index"),
    ],
)
def test_a_bad_index_is_refused_in_one_line(checkpoint, capsys, index, refused):
    folder, _ = checkpoint
    (folder / "bad.safetensors.index.json").write_text(json.dumps(index))
    code = main(
        [
            "analyze",
            "bad.safetensors.index.json",
            "--arch",
            "tiny_llama:make",
            "--input",
            "input_ids=1x32",
            "--no-probe",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and refused in err[0]


def test_an_index_needs_arch(checkpoint, capsys):
    code = main(["analyze", "model.safetensors.index.json", "--no-probe"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--arch" in err[0]


def _onnx_mlp(folder, external: bool, width: int = 256, depth: int = 4):
    """A ReLU MLP as ONNX, its weights inline or all in one external data file."""
    import numpy as np
    import onnx
    from onnx_graphs import he_weights, relu_mlp

    model = relu_mlp(he_weights(depth, width), [np.full(width, 0.1, np.float32)] * depth)
    path = folder / ("external.onnx" if external else "inline.onnx")
    if external:
        onnx.save(model, path, save_as_external_data=True, location="external.data", size_threshold=0)
    else:
        onnx.save(model, path)
    return path


def test_onnx_external_data_is_streamed_one_weight_at_a_time(tmp_path, monkeypatch):
    """Without the probe, weights in an external data file are mapped as the analysis reaches them and let go:
    never more than two weights alive at once; the table equals the inline file's; the data file is untouched and
    mapped read-only."""
    import gc
    import hashlib
    import weakref

    from initcheck.frontends import onnx_load
    from initcheck.stats import keeps_values

    inline, external = _onnx_mlp(tmp_path, False), _onnx_mlp(tmp_path, True)
    data = tmp_path / "external.data"
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    alive, most, original = [], [0], onnx_load.ExternalTensor.read

    def read(self):
        array = original(self)
        if keeps_values(array):  # small constants (the biases here) are kept by design
            return array
        gc.collect()
        alive[:] = [r for r in alive if r() is not None]
        alive.append(weakref.ref(array))
        most[0] = max(most[0], len(alive))
        return array

    monkeypatch.setattr(onnx_load, "_MAP_FROM", 0)  # every weight memory-mapped, as large ones are
    monkeypatch.setattr(onnx_load.ExternalTensor, "read", read)
    streamed = initcheck.analyze(external)
    loaded = initcheck.analyze(inline)
    assert 0 < most[0] <= 2  # the weight read now, and the one before it until its name is rebound
    assert [(r.label, r.symbolic.K, r.symbolic.G) for r in streamed.layers] == [
        (r.label, r.symbolic.K, r.symbolic.G) for r in loaded.layers
    ]
    assert [f.code for f in streamed.findings] == [f.code for f in loaded.findings]
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
    assert not original(
        onnx_load.external_tensors(onnx_load.read_model(external, stream=True), external)[0][1]
    ).flags.writeable


def test_onnx_external_data_with_the_probe_is_loaded_and_run(tmp_path):
    external = _onnx_mlp(tmp_path, True)
    report = initcheck.analyze(external, probe=True)
    assert report.probe is not None and all(r.measured is not None for r in report.layers if r.op != "input")
