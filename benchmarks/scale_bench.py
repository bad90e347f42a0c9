"""Symbolic analysis of Llama-architecture models at 1.1B and 7B parameters, as a printed table (issue 16's
targets: 7B under 4 GiB peak RSS and 2 minutes, 1.1B under 1.5 GiB, on a 2-core CPU), from two sources:

- the meta device: the model built under `torch.device("meta")`, its weights' statistics from its own init, one
  block at a time;
- a safetensors checkpoint: a bf16 checkpoint generated shard by shard (1 GiB shards and their index JSON) in a
  temporary folder, analysed with `--arch` and no probe, its weights read one tensor at a time.

- an ONNX file with external data: the model exported (float32) with its weights in one data file beside it,
  analysed with no probe, its weights memory-mapped one at a time (`--sources onnx`; exporting is slow and needs
  the model in memory, so it is not in the default sources).

    python benchmarks/scale_bench.py [--sizes 1.1b 7b] [--sources meta safetensors onnx] [--tokens 128]

Each measurement runs in its own process: wall time from building the model (or opening the checkpoint) to the
report, and the process's peak resident memory over its whole life (Python, torch and transformers imports
included). Generating the checkpoint is not timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    # TinyLlama-1.1B's shape
    "1.1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
    # Llama-2-7B's shape with grouped-query attention 32/8
    "7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
}


FACTORY = """import transformers
CONFIG = {config!r}


def make():
    config = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=4096, use_cache=False, **CONFIG)
    return transformers.LlamaForCausalLM(config).eval()
"""


def write_checkpoint(size: str, folder: Path) -> Path:
    """A bf16 checkpoint of the model's shapes (weights N(0, 0.02), norms 1), written shard by shard from a
    meta-device build, and the factory module that --arch names. Returns the index JSON."""
    import importlib.util

    import torch
    from safetensors.torch import save_file

    factory = folder / "scale_factory.py"
    factory.write_text(FACTORY.format(config=CONFIGS[size]))
    spec = importlib.util.spec_from_file_location(f"scale_factory_{size.replace('.', '_')}", factory)
    assert spec is not None and spec.loader is not None
    scale_factory = importlib.util.module_from_spec(spec)  # this size's, not one imported for another size
    spec.loader.exec_module(scale_factory)

    with torch.device("meta"):
        model = scale_factory.make()
    shard, shard_bytes, weight_map, count = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_bytes, count
        if shard:
            count += 1
            name = f"model-{count:05d}.safetensors"
            save_file(shard, str(folder / name))
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_bytes = {}, 0

    generator = torch.Generator().manual_seed(0)
    for name, meta in model.state_dict().items():
        if "norm" in name:
            tensor = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name], shard_bytes = tensor, shard_bytes + tensor.numel() * 2
        if shard_bytes >= 2**30:
            flush()
    flush()
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def write_onnx(size: str, folder: Path) -> Path:
    """The model exported to ONNX (the torch.export-based exporter, float32, transformers' init), its weights in one
    external data file beside it, as a model over 2 GB must be stored."""
    import logging
    import warnings

    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=4096, use_cache=False, **CONFIGS[size])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    path = folder / "model.onnx"
    ids = torch.randint(0, 32000, (1, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        torch.onnx.export(model, (ids,), str(path), input_names=["input_ids"], dynamo=True, external_data=True)
    return path


def _peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from the
    parent across exec, so a child started by a parent that just wrote 1 GiB shards would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(size: str, tokens: int, source: str, folder: str) -> dict:
    import time
    import warnings

    import numpy as np
    import onnx
    import torch
    import transformers

    import initcheck

    warnings.simplefilter("ignore")
    start = time.perf_counter()
    if source == "meta":
        config = transformers.LlamaConfig(
            vocab_size=32000, max_position_embeddings=4096, use_cache=False, **CONFIGS[size]
        )
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config).eval()
        parameters = sum(p.numel() for p in model.parameters())
        report = initcheck.analyze(model, {"input_ids": torch.randint(0, 32000, (1, tokens))})
    elif source == "onnx":
        report = initcheck.analyze(Path(folder) / "model.onnx")
        parameters = sum(
            int(np.prod(t.dims))
            for t in onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False).graph.initializer
        )
    else:
        sys.path.insert(0, folder)
        index = Path(folder) / "model.safetensors.index.json"
        report = initcheck.analyze(index, {"input_ids": ((1, tokens), "int64")}, arch="scale_factory:make")
        import scale_factory

        with torch.device("meta"):
            parameters = sum(p.numel() for p in scale_factory.make().parameters())
    seconds = time.perf_counter() - start
    peak = _peak_rss_gib()
    return {
        "size": size,
        "parameters": parameters,
        "seconds": round(seconds, 1),
        "peak_gib": round(peak, 2),
        "rows": len(report.layers),
        "findings": sorted({f"{f.code} {f.severity}" for f in report.findings}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=list(CONFIGS))
    parser.add_argument("--sources", nargs="*", default=["meta", "safetensors"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # the child process's size, source, folder
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.tokens, args.one[1], args.one[2])))
        return
    print("| model | parameters | from | wall time | peak RSS | rows | findings |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for source in args.sources:
            with tempfile.TemporaryDirectory() as folder:
                if source == "safetensors":
                    write_checkpoint(size, Path(folder))
                elif source == "onnx":
                    write_onnx(size, Path(folder))
                out = subprocess.run(
                    [sys.executable, __file__, "--one", size, source, folder, "--tokens", str(args.tokens)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            origin = {
                "meta": "meta device",
                "safetensors": "safetensors (bf16, 1 GiB shards)",
                "onnx": "ONNX, external data (float32)",
            }[source]
            print(
                f"| Llama {size} | {r['parameters'] / 1e9:.2f}B | {origin} | {r['seconds']} s | {r['peak_gib']} GiB "
                f"| {r['rows']} | {', '.join(r['findings'])} |"
            )


if __name__ == "__main__":
    main()
