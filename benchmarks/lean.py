"""How much of each layer's gradient leans along its own signal within a sample, measured with hooks (docs/theory.md
§18). Not part of the pass and not a test: the evidence for §18, and the reference a model of it will be judged by.

    python benchmarks/lean.py [--model mobilenetv3_small_at_scale] [--seeds 4] [--image 64] [--batch 32]

A zoo CNN (tests/zoo.py) at its measured size (the narrow ones on --batch images of --image pixels), in training
mode, on N(0, 1) images and N(0, 1) cotangents. For every four-dimensional output (each module's, a
squeeze-excitation's product included), per channel c of sample n over the map's positions p, with x~ and g~ the
value and its gradient less their means over the map:
- `shared`: the part of G the positions share, E[(mean_p g)^2] / E[g^2];
- `R`: what the pairs of distinct positions add to E[(sum_p g~ x~)^2], over the independent product n E[g~^2] E[x~^2]
  (per sample and channel): 0 where the gradient does not lean along the signal, n E[beta^2] Var(x~) / E[g~^2] where
  g~ = beta x~ + noise. A gate that scales the channel sums exactly sum_p g x, so R is what its gradient gains;
- `common` / `own`: E[beta^2] of the per-sample coefficient the channels share, and of each channel's own, from the
  per-channel regressions beta_nc = sum_p g~ x~ / sum_p x~^2 less their sampling noise (sandwich estimate); the
  table's `common share` is common / (common + own), which noise can push outside [0, 1] where the lean is small;
- `lag 1` / `lag 2`: E[g_p g_q] / E[g^2] for neighbours one and two positions apart (along either axis): a stride-2
  conv further on hands the positions of one phase (lag 2) the same part of a shared gradient.

`--gates` measures, at each squeeze-excitation gate instead, what its gradient `sum_p g_p x_p` (per sample and
channel, g the product's gradient, x the gated map) is made of, as shares of its second moment: `coherent`
(n^2 times mean g times mean x, the part the pass's coherent term is), `independent` (the positions' own products
of g~ x~) and `pairs` (the distinct positions' pairs of g~ x~: the lean); with `shared` the share of G every position
shares (less the 1/n a finite map's mean keeps of independent positions), `overlap` the independent products over
the product of their means (E[g~^2 x^2] / (E[g~^2] E[x^2])) and `map` the part of it the two energies' profiles over
the map make (docs/theory.md §18).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the zoo


def lean_statistics(x, g) -> dict[str, float]:
    """The lean of gradient g along value x, both (N, C, H, W) float64 tensors: shared, R, common, own (above)."""
    positions = x.shape[2] * x.shape[3]
    xt = x - x.mean((2, 3), keepdim=True)
    gt = g - g.mean((2, 3), keepdim=True)
    sums = (gt * xt).sum((2, 3))
    diagonal = ((gt * xt) ** 2).sum((2, 3))  # the positions' own products: what independent positions give
    energy = (xt**2).sum((2, 3))
    independent = positions * ((gt**2).mean((2, 3)) * (xt**2).mean((2, 3))).mean()
    beta = sums / energy
    noise = diagonal / energy**2  # the regression's sampling variance, robust to uneven energies
    common = (beta.mean(1) ** 2).mean() - noise.mean() / x.shape[1]
    return {
        "shared": float((g.mean((2, 3)) ** 2).mean() / (g**2).mean()),
        "R": float(((sums**2).mean() - diagonal.mean()) / independent),
        "common": float(common),
        "own": float((beta**2).mean() - noise.mean() - common),
        "lag 1": _lag_correlation(g, 1),
        "lag 2": _lag_correlation(g, 2),
    }


def _lag_correlation(g, lag: int) -> float:
    """E[g_p g_q] / E[g^2] over the pairs `lag` positions apart along either spatial axis."""
    if min(g.shape[2], g.shape[3]) <= lag:
        return float("nan")
    rows = (g[:, :, lag:, :] * g[:, :, :-lag, :]).mean()
    columns = (g[:, :, :, lag:] * g[:, :, :, :-lag]).mean()
    return float((rows + columns) / 2 / (g**2).mean())


def gate_statistics(x, g) -> dict[str, float]:
    """What a gate's gradient sum_p g_p x_p is made of (above), x the gated map and g the product's gradient, both
    (N, C, H, W) float64 tensors."""
    positions = x.shape[2] * x.shape[3]
    g_mean, x_mean = g.mean((2, 3)), x.mean((2, 3))
    gt = g - g_mean[..., None, None]
    total = ((g * x).sum((2, 3)) ** 2).mean()
    coherent = ((positions * g_mean * x_mean) ** 2).mean()
    own = ((gt * x) ** 2).sum((2, 3)).mean()
    varying = ((gt * (x - x_mean[..., None, None])).sum((2, 3)) ** 2).mean()
    diagonal = ((gt * (x - x_mean[..., None, None])) ** 2).sum((2, 3)).mean()
    energy, shared = (g**2).mean(), (g_mean**2).mean()
    product = positions * ((gt**2).mean((2, 3)) * (x**2).mean((2, 3))).mean()
    profile = ((gt**2).mean((0, 1)) * (x**2).mean((0, 1))).mean() / ((gt**2).mean() * (x**2).mean())
    return {
        "shared": float((shared - (energy - shared) / (positions - 1)) / energy),
        "coherent": float(coherent / total),
        "independent": float(diagonal / total),
        "pairs": float((varying - diagonal) / total),
        "overlap": float(own / product),
        "map": float(profile),
    }


def measure(
    model_name: str, seeds: int, image: int = 64, batch: int = 32, gates: bool = False
) -> list[tuple[str, tuple, dict[str, float]]]:
    """Per four-dimensional output of the model (or per squeeze-excitation gate, `gates`), in the order they are
    made: (module, shape, statistics averaged over `seeds` batches). A model at its checkpoints' width is measured
    at its training size, the others (the zoo's narrow CNNs) on `batch` images of `image` pixels, as the accuracy
    benchmark does."""
    import torch
    from zoo import STOCK

    model = next((m for m in STOCK if m.name == model_name), None)
    if model is None:
        raise SystemExit(f"no zoo model named {model_name}")
    module, inputs = model.build()
    example = inputs.get("x") if isinstance(inputs, dict) else None
    if example is None or example.dim() != 4:
        raise SystemExit(f"{model_name} does not take an image: the lean is measured over a feature map's positions")
    size, batch = model.measured_at or (image, batch)
    module.train()
    captured: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (module, its output, its input)

    def keep(name):
        def hook(_module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.requires_grad:
                if all(output is not seen for _, seen, _ in captured):  # a container returns its last child's
                    output.retain_grad()
                    captured.append((name, output, inputs[0]))

        return hook

    for name, child in module.named_modules():
        if name and (not gates or "SqueezeExcit" in type(child).__name__):
            child.register_forward_hook(keep(name))
    totals: dict[str, dict[str, float]] = {}
    shapes: dict[str, tuple] = {}
    for seed in range(seeds):
        captured.clear()
        x = torch.randn(batch, example.shape[1], size, size, generator=torch.Generator().manual_seed(seed))
        out = module(x)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1000 + seed)))
        for name, value, source in captured:
            if value.grad is None or value.shape[2] * value.shape[3] < 2:
                continue
            grad = value.grad.double()
            stats = (
                gate_statistics(source.detach().double(), grad)
                if gates
                else lean_statistics(value.detach().double(), grad)
            )
            shapes[name] = tuple(value.shape[1:])
            running = totals.setdefault(name, dict.fromkeys(stats, 0.0))
            for key, v in stats.items():
                running[key] += v / seeds
        module.zero_grad()
    return [(name, shapes[name], totals[name]) for name in totals]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv3_small_at_scale", help="a zoo name")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--image", type=int, default=64, help="pixels, for a model without a training size")
    parser.add_argument("--batch", type=int, default=32, help="images, for a model without a training size")
    parser.add_argument("--gates", action="store_true", help="what each squeeze-excitation gate's gradient is made of")
    args = parser.parse_args(argv)
    rows = measure(args.model, args.seeds, args.image, args.batch, args.gates)
    if args.gates:
        keys = ("shared", "coherent", "independent", "pairs", "overlap", "map")
        print("| gate | C | positions | " + " | ".join(keys) + " |")
        print("|---|---|---|" + "---|" * len(keys))
        for name, (channels, h, w), stats in rows:
            print(f"| {name} | {channels} | {h * w} | " + " | ".join(f"{stats[k]:.3f}" for k in keys) + " |")
        return 0
    print("| layer | C | positions | shared | R | common share | lag 1 | lag 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (channels, h, w), stats in rows:
        lean = stats["common"] + stats["own"]
        common = f"{stats['common'] / lean:.2f}" if lean > 0 else "-"
        print(
            f"| {name} | {channels} | {h * w} | {stats['shared']:.4f} | {stats['R']:+.3f} | {common} "
            f"| {stats['lag 1']:+.3f} | {stats['lag 2']:+.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
