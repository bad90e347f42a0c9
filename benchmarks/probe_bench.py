"""Probe cost on a ResNet-50-sized and a GPT-2-small-sized model (issue 4's targets), printed as a table.

    python benchmarks/probe_bench.py [--batch 8] [--device cpu] [--cases resnet50 gpt2]

Each figure is measured in its own process: wall time of one step (median of 3 after a warm-up), and the
process's peak resident memory over its whole life, so the probe also pays for its export and graph
translation. Targets: torch probe <= 1.5x the time
and <= 1.3x the peak memory of a bare forward+backward of the same model and batch; ONNX forward probe <=
1.5x a plain onnxruntime run with every intermediate exposed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resnet50():
    """ResNet-50 at full size (widths 64-512, blocks 3-4-6-3, 1000 classes): the zoo's torchvision-faithful one."""
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo import ResNet50ish

    return ResNet50ish(width=64, blocks=(3, 4, 6, 3), classes=1000)


def gpt2_small():
    from torch import nn
    from transformers import GPT2Config, GPT2Model

    class LastHidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = GPT2Model(GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257))

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    return LastHidden()


def build(case: str, batch: int):
    import torch

    torch.manual_seed(0)
    if case == "resnet50":
        return resnet50().eval(), (torch.randn(batch, 3, 224, 224),)
    return gpt2_small().eval(), (torch.randint(0, 50257, (batch, 128)), torch.ones(batch, 128, dtype=torch.long))


def _rss() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def measure(case: str, mode: str, batch: int, device: str, folder: str) -> dict:
    """One figure in this process: setup, warm-up, reset the peak, time one step."""
    import torch

    from initcheck.probes.common import ProbeOptions

    model, args = build(case, batch)
    onnx_path = Path(folder) / f"{case}.onnx"
    if mode == "bare":
        model = model.to(device)
        args = tuple(a.to(device) for a in args)

        def step():
            inputs = [a.requires_grad_(True) if a.is_floating_point() else a for a in args]
            y = model(*inputs)
            y.backward(torch.randn_like(y))
            model.zero_grad(set_to_none=True)
    elif mode == "probe":
        from initcheck.frontends.torch_frontend import from_exported_program
        from initcheck.passes import fuse_pointwise
        from initcheck.probes.torch_probe import probe_program

        program = torch.export.export(model, args)
        graph = from_exported_program(program)
        fuse_pointwise(graph)
        del model

        def step():
            probe_program(program, graph, ProbeOptions(device=device, seeds=1, batch=batch))
    else:
        import onnxruntime  # noqa: F401

        from initcheck.frontends import load_model
        from initcheck.frontends.onnx_load import read_model
        from initcheck.passes import fuse_pointwise
        from initcheck.probes.common import new_accumulator
        from initcheck.probes.onnx_probe import _session, forward_statistics

        graph, _ = load_model(onnx_path)
        fuse_pointwise(graph)
        onnx_model = read_model(onnx_path)
        produced = {o for n in onnx_model.graph.node for o in n.output}
        wanted = [v.name for n in graph.nodes for v in n.outputs if v.name in produced and v.is_float]
        session = _session(onnx_model, wanted, device)
        feeds = {i.name: a for i, a in zip(session.get_inputs(), args)}
        del model, onnx_model
        if mode == "ort":

            def step():
                session.run(wanted, {k: v.numpy() for k, v in feeds.items()})
        else:

            def step():
                accumulator = new_accumulator(graph)
                accumulator.batch = batch
                forward_statistics(session, wanted, feeds, accumulator)

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    _, peak = _rss()
    return {"seconds": sorted(times)[1], "peak_bytes": peak}


def export_onnx(case: str, batch: int, folder: str) -> None:
    import logging
    import warnings

    import torch

    model, args = build(case, batch)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.onnx.export(
        model,
        args,
        str(Path(folder) / f"{case}.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["x"] if case == "resnet50" else ["input_ids", "attention_mask"],
    )


def run_one(case: str, mode: str, batch: int, device: str, folder: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", case, mode, "--batch", str(batch), "--device", device, "--folder", folder],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=["resnet50", "gpt2"])
    parser.add_argument("--one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch, args.device, args.folder)))
        return
    mb = 1 / 2**20
    print(
        f"device {args.device}, batch {args.batch}; time = median of 3 steps after a warm-up; "
        "peak = the measuring process's peak resident memory, setup included"
    )
    print(f"{'model':10s} {'step':26s} {'time s':>8s} {'peak MiB':>9s} {'ratio t':>8s} {'ratio mem':>9s} target")
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            export_onnx(case, args.batch, folder)
            bare, probe = (run_one(case, m, args.batch, args.device, folder) for m in ("bare", "probe"))
            ort, fwd = (run_one(case, m, args.batch, "cpu", folder) for m in ("ort", "onnx_probe"))
            rows = [
                ("bare forward+backward", bare, None, ""),
                ("torch probe", probe, bare, "<=1.5x t, <=1.3x mem"),
                ("onnxruntime, all outputs", ort, None, ""),
                ("ONNX forward probe", fwd, ort, "<=1.5x t"),
            ]
            for label, r, ref, target in rows:
                ratio_t = f"{r['seconds'] / ref['seconds']:.2f}" if ref else ""
                ratio_m = f"{r['peak_bytes'] / ref['peak_bytes']:.2f}" if ref else ""
                print(
                    f"{case:10s} {label:26s} {r['seconds']:8.2f} {r['peak_bytes'] * mb:9.0f} {ratio_t:>8s} {ratio_m:>9s} {target}"
                )


if __name__ == "__main__":
    main()
