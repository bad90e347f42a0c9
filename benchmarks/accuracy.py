"""How close the symbolic pass comes to measurement, per model of the zoo: the share of layer rows whose predicted
second moment K (and gradient second moment G) lies within 15% and within 2x of the probe's measurement, the
median |log10| error, the worst row, and the agreement check's findings (IC401: K beyond its bar, a warning; G
beyond its bar, information; each grouped to one per model).

    python benchmarks/accuracy.py [--models resnet50 gpt2 ...] [--seeds 8] [--batch 32] [--rows FILE.jsonl]
                                  [--draws 4]

The models are the zoo's stock models (tests/zoo.py: library configs and faithful re-implementations with their
libraries' init code), analysed as live modules in their own mode, the probe on CPU; CNNs at --batch images of
--image pixels (the ResNets at torchvision's widths at 224x224, batch 8: their training size). Not a test: a table for the
README, and the figures the accuracy work is judged by. The measurement must be closer to the expectation than
the 15% it judges: a language model's sample is one sequence, and at 4 seeds x 8 (32 sequences) a decoder's
attention outputs measured 10% off their mean over 256 sequences (which the prediction matches within 3.5%), so
the default is 8 seeds x 32 samples; a model whose 90th-percentile row still measures G with a sampling error
over 3% (1 sigma, reported by the probe) is measured again at 2, 4 or 8 times the seeds (MobileNetV3-small and
EfficientNet-B0 at 224x224, batch 8: 32 seeds). The table gives each model's seeds and its median row's G sampling
error.

The zoo's models are narrow (8-128 channels), where one network's own weights move its rows by 10-30% from the
ensemble the pass predicts (docs/theory.md §12): a single draw can flatter a family or blame a correct rule.
`--draws N` measures each model at N weight draws (draw d offsets every seed the zoo's builder sets by d) and adds a
table of each draw's share of G rows within 15% and their mean.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the zoo


def row_errors(report, which: str) -> list[tuple[float, str]]:
    """(log10 predicted / measured, row label) for every row where both are positive and finite."""
    out = []
    for row in report.layers:
        if row.measured is None:
            continue
        pred, meas = (row.symbolic.K, row.measured.K) if which == "K" else (row.symbolic.G, row.measured.G)
        if pred and meas and 0 < pred < math.inf and 0 < meas < math.inf:
            out.append((math.log10(pred / meas), f"{row.label} ({row.op})"))
    return out


def summarize(errors: list[tuple[float, str]]) -> dict:
    if not errors:
        return {"rows": 0}
    logs = [abs(e) for e, _ in errors]
    worst = max(errors, key=lambda e: abs(e[0]))
    return {
        "rows": len(errors),
        "within_15": sum(e <= math.log10(1.15) for e in logs) / len(logs),
        "within_2x": sum(e <= math.log10(2) for e in logs) / len(logs),
        "median": statistics.median(logs),
        "worst": f"{worst[0]:+.2f} at {worst[1]}",
    }


def row_records(model_name: str, report) -> list[dict]:
    """One record per measured row: what calibrating the error bars needs."""
    out = []
    for row in report.layers:
        if row.measured is None or not (0 < row.symbolic.K < math.inf and 0 < row.measured.K < math.inf):
            continue
        out.append(
            {
                "model": model_name,
                "row": row.label,
                "op": row.op,
                "exact": row.symbolic.exact,
                "status": row.status,
                "spread": row.symbolic.K_bar,
                "sampling": row.measured.K_bar,
                "log_error": math.log(row.symbolic.K / row.measured.K),
                "grad_exact": row.symbolic.grad_exact,
                "grad_log_error": _log_ratio(row.symbolic.G, row.measured.G),
                "grad_sampling": row.measured.G_bar,
            }
        )
    return out


def _log_ratio(predicted: float | None, measured: float | None) -> float | None:
    if predicted and measured and 0 < predicted < math.inf and 0 < measured < math.inf:
        return math.log(predicted / measured)
    return None


@contextlib.contextmanager
def weight_draw(draw: int):
    """Build a zoo model at another draw of its weights: every seed its builder sets is offset by `draw`."""
    import torch

    original = torch.manual_seed
    if draw:
        torch.manual_seed = lambda seed: original(seed + draw)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.manual_seed = original


def measure(model, seeds: int, batch: int, image: int, draw: int = 0) -> dict:
    import torch

    import initcheck
    from initcheck.options import ProbeOptions

    with weight_draw(draw):
        module, inputs = model.build()
    if image and model.measured_at:  # a model at its checkpoints' width, measured at its training size
        image, batch = model.measured_at
    if image and isinstance(inputs, dict) and set(inputs) == {"x"} and inputs["x"].ndim == 4:
        # the zoo's CNN inputs are one 32x32 image (fast tests); batch statistics over 2x2 maps of one image are
        # a regime no one trains in, so the accuracy is measured at a batch of `batch` images of `image` pixels
        inputs = {"x": torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(0))}
    start = time.perf_counter()
    report = initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=seeds, batch=batch))
    if (more := seeds_for_precision(report, seeds)) > seeds:
        seeds = more
        report = initcheck.analyze(module, inputs, probe=ProbeOptions(device="cpu", seeds=seeds, batch=batch))
    return {
        "model": model.name,
        "draw": draw,
        "family": model.family,
        "seeds": seeds,
        "sampling_G": _quantile(_gradient_bars(report), 0.5),
        "K": summarize(row_errors(report, "K")),
        "G": summarize(row_errors(report, "G")),
        "ic401": sum(f.code == "IC401" and f.severity == "warning" for f in report.findings),
        "ic401_g": sum(f.code == "IC401" and f.severity == "info" for f in report.findings),
        "seconds": time.perf_counter() - start,
        "records": [{**record, "draw": draw} for record in row_records(model.name, report)],
    }


# The measurement is the reference every row is judged against, so its own error must be small beside the 15% it
# judges: the 90th-percentile row's relative 1-sigma sampling error of G at most 3% (its 2 sigma under half of
# ln 1.15). At 8 seeds x 8 images MobileNetV3-small's early rows scatter by 0.11 in ln per seed (0.04 over eight:
# the zoo's draw sat 0.05-0.07 above three other sets of eight seeds) and its squeeze-excitation rows by more.
PRECISION = 0.03
MAX_SEEDS = 64


def seeds_for_precision(report, seeds: int) -> int:
    """The seeds that bring the 90th-percentile row's G sampling error to PRECISION (it falls as 1/sqrt(seeds)),
    a power-of-two multiple of `seeds`, at most MAX_SEEDS; `seeds` where it is there already."""
    bar = _quantile(_gradient_bars(report), 0.9)
    if bar is None or bar <= PRECISION:
        return seeds
    return min(MAX_SEEDS, seeds * 2 ** math.ceil(math.log2((bar / PRECISION) ** 2)))


def _gradient_bars(report) -> list[float]:
    """Each row's relative sampling error of its measured G (rows with a measured gradient)."""
    return [r.measured.G_bar for r in report.layers if r.measured and r.measured.G]


def _quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else None


def _pct(x, digits: int = 0) -> str:
    return f"{x:.{digits}%}" if isinstance(x, float) else "-"


def table(results: list[dict]) -> str:
    lines = [
        "| model | family | rows | K within 15% | K within 2x | K median log10 err | K worst (log10) "
        "| G within 15% | G within 2x | IC401 K | IC401 G | seeds | G sampling |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        k, g = r["K"], r["G"]
        lines.append(
            f"| {r['model']} | {r['family']} | {k['rows']} | {_pct(k.get('within_15'))} | {_pct(k.get('within_2x'))} "
            f"| {k.get('median', float('nan')):.3f} | {k.get('worst', '-')} | {_pct(g.get('within_15'))} "
            f"| {_pct(g.get('within_2x'))} | {r['ic401']} | {r['ic401_g']} | {r['seeds']} "
            f"| {_pct(r['sampling_G']) if r['sampling_G'] is not None else '-'} |"
        )
    return "\n".join(lines)


def draws_table(results: list[dict]) -> str:
    """Per model, the share of G rows within 15% at each weight draw and their mean; last, every model's rows
    pooled at each draw and over all draws."""
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    draws = max(len(v) for v in by_model.values())
    lines = [
        "| model | " + " | ".join(f"draw {d}" for d in range(draws)) + " | mean |",
        "|---|" + "---|" * (draws + 1),
    ]
    for name, runs in by_model.items():
        shares = [r["G"].get("within_15") for r in sorted(runs, key=lambda r: r["draw"])]
        known = [x for x in shares if isinstance(x, float)]
        mean = sum(known) / len(known) if known else None
        lines.append(f"| {name} | " + " | ".join(_pct(x) for x in shares) + f" | {_pct(mean)} |")
    pooled = [_pooled([r for r in results if r["draw"] == d]) for d in range(draws)]
    lines.append("| all rows | " + " | ".join(_pct(x, 1) for x in pooled) + f" | {_pct(_pooled(results), 1)} |")
    return "\n".join(lines)


def _pooled(results: list[dict]) -> float | None:
    """The share of G rows within 15% over every row of these results (each model weighs by its rows)."""
    measured = [r["G"] for r in results if isinstance(r["G"].get("within_15"), float)]
    rows = sum(g["rows"] for g in measured)
    return sum(g["rows"] * g["within_15"] for g in measured) / rows if rows else None


def main() -> None:
    from zoo import STOCK

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="zoo names (default: every stock model)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image", type=int, default=64, help="CNN input size (0: the zoo's own 32x32, batch 1)")
    parser.add_argument("--rows", metavar="FILE.jsonl", help="also write one JSON record per measured row")
    parser.add_argument("--draws", type=int, default=1, help="weight draws per model (the zoo's own is draw 0)")
    args = parser.parse_args()
    chosen = [m for m in STOCK if not args.models or m.name in args.models]
    results = []
    for model in chosen:
        for draw in range(args.draws):
            try:
                results.append(measure(model, args.seeds, args.batch, args.image, draw))
            except Exception as e:  # one model that does not run must not hide the others
                print(f"{model.name} (draw {draw}): {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    print(table([r for r in results if r["draw"] == 0]))
    if args.draws > 1:
        print()
        print(draws_table(results))
    if args.rows:
        import json

        with open(args.rows, "w") as f:
            for r in results:
                f.writelines(json.dumps(record) + "\n" for record in r["records"])


if __name__ == "__main__":
    main()
