"""The probe at LLM scale: Llama-architecture models at 1.1B and 7B parameters, probed whole, in mixed precision,
and on a prefix of their stack, with how well the measurement agrees with the prediction on the rows it measured.

    python benchmarks/probe_scale_bench.py --size 1.1b --device cuda --model-dtype float32 \
        --runs full bf16 layers=4
    python benchmarks/probe_scale_bench.py --size 7b --device cuda --model-dtype bfloat16 --runs full layers=8

A run is `symbolic` (no probe: the baseline the probe's cost adds to), `full` (the whole model probed, in the
model's own dtype), `bf16` (bfloat16 autocast) or `layers=N` (the first N blocks). The model is built once with transformers' own init (seed 0);
each run is one `initcheck.analyze` call (export, symbolic pass, probe). The model is built on the host, as
users have it before a check; the probe copies its weights to the device. Printed per run, as a Markdown row and a
JSON line: the wall time of the call, the device's peak memory during the call
(CUDA) or the process's peak RSS (CPU; the model itself included, one process per run), the rows measured, and the share of measured rows whose K and G are
within 15% of the prediction.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale_bench import CONFIGS  # noqa: E402

SIZES = {
    **CONFIGS,
    "tiny": dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2
    ),
}


def build(size: str, dtype: str):
    """On the host, as users have it before a check; the probe moves the weights to its device."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=4096, use_cache=False, **SIZES[size])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built and initialised in this dtype: no float32 copy first
    try:
        return transformers.LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def agreement(report) -> dict:
    """Share of measured rows within 15% of the prediction, for K and for G, and the median |log10| error."""
    out = {}
    for quantity in ("K", "G"):
        pairs = [
            (getattr(r.symbolic, quantity), getattr(r.measured, quantity))
            for r in report.layers
            if r.measured is not None
        ]
        pairs = [(p, m) for p, m in pairs if p and m and p > 0 and m > 0 and math.isfinite(p) and math.isfinite(m)]
        errors = [abs(math.log10(p / m)) for p, m in pairs]
        out[quantity] = {
            "rows": len(pairs),
            "within_15pct": round(sum(e <= math.log10(1.15) for e in errors) / len(errors), 3) if errors else None,
            "median_log10": round(statistics.median(errors), 4) if errors else None,
        }
    return out


def peak_host_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run(model, run_name: str, device: str, tokens: int, seeds: int) -> dict:
    import torch

    import initcheck
    from initcheck.options import ProbeOptions

    settings = {"device": device, "seeds": seeds, "batch": 1}
    if run_name == "bf16":
        settings["dtype"] = "bfloat16"
    elif run_name.startswith("layers="):
        settings["layers"] = int(run_name.split("=")[1])
    ids = torch.randint(0, 32000, (1, tokens), generator=torch.Generator().manual_seed(0))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    probe = ProbeOptions(**settings) if run_name != "symbolic" else False
    report = initcheck.analyze(model, {"input_ids": ids}, probe=probe)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else peak_host_gib()
    measured = sum(r.measured is not None for r in report.layers)
    return {
        "run": run_name,
        "seconds": round(seconds, 1),
        "peak_gib": round(peak, 2),
        "rows": len(report.layers),
        "measured_rows": measured,
        "probe_device": (report.probe or {}).get("device"),
        "notes": (report.probe or {}).get("notes"),
        "agreement": agreement(report),
        "findings": sorted({f"{f.code} {f.severity}" for f in report.findings}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.1b", choices=list(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--runs", nargs="*", default=["symbolic", "full", "bf16", "layers=4"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="append each run's JSON line to FILE")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args, args.one)))
        return
    print("| model | weights | probe | wall time | peak memory | rows measured | K within 15% | G within 15% |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.runs:  # each in its own process: a clean peak, as a user's one run has
        command = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        k, g = r["agreement"]["K"], r["agreement"]["G"]
        where = f"on {r['probe_device']}" if r["probe_device"] else ""
        print(
            f"| Llama {args.size} ({r['parameters'] / 1e9:.2f}B) | {args.model_dtype} | {name} {where} "
            f"| {r['seconds']} s | {r['peak_gib']} GiB | {r['measured_rows']} / {r['rows']} "
            f"| {k['within_15pct']} | {g['within_15pct']} |",
            flush=True,
        )


def measure_one(args, name: str) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    started = time.perf_counter()
    model = build(args.size, args.model_dtype)
    built = time.perf_counter() - started
    r = run(model, name, args.device, args.tokens, args.seeds)
    return r | {
        "size": args.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_dtype": args.model_dtype,
        "device": args.device,
        "build_seconds": round(built, 1),
    }


if __name__ == "__main__":
    main()
