"""Options, results and the pieces both probes share: device choice, inputs, what to measure, the run loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from initcheck.errors import UsageError
from initcheck.ir import Graph
from initcheck.moments import Estimate
from initcheck.options import ProbeOptions  # noqa: F401  (re-exported: probes take it)
from initcheck.probes.accumulate import Accumulator, Measured

RELU_FAMILY = {"relu", "leaky_relu", "prelu", "clip"}
SATURATING = {"tanh": "tanh", "sigmoid": "sigmoid", "hard_sigmoid": "sigmoid"}


@dataclass
class ProbeResult:
    measured: dict[str, Measured]
    device: str
    samples: int
    runs: int
    loss: str
    resampled_weights: bool
    max_relative_difference: float | None = None  # ONNX: torch form vs onnxruntime, relative L2
    max_difference_at: str | None = None
    notes: list[str] = field(default_factory=list)

    def estimates(self) -> dict[str, Estimate]:
        """Every measured value by name, in the type the symbolic pass's predictions share."""
        return {
            name: Estimate(
                m.mean,
                m.K,
                m.G,
                m.K_se if math.isfinite(m.K_se) else 0.0,
                G_bar=m.G_se if math.isfinite(m.G_se) else 0.0,
            )
            for name, m in self.measured.items()
        }


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here (use --device cpu or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return f"cuda:{index}"
    raise UsageError(f"--device {name}: expected cpu, cuda, cuda:N or auto")


def measured_kinds(graph: Graph) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """Which values get dead-unit / saturation counts, and which get per-phase K (up-sampling outputs)."""
    kinds, grids = {}, {}
    for node in graph.nodes:
        out = node.outputs[0].name if node.outputs else None
        if out is None:
            continue
        function = node.attrs.get("function") if node.op == "pointwise" else node.op
        if function in RELU_FAMILY and not (function == "clip" and _attr(node, "min", 0.0) < 0):
            kinds[out] = "relu"  # a clip with a negative floor (ReLU6 has 0; fake quantisation has not) kills nothing
        elif function in SATURATING:
            kinds[out] = SATURATING[function]
        if node.op == "conv_transpose" and len(node.attrs.get("strides", [])) == 2:
            grids[out] = tuple(node.attrs["strides"])
        elif node.op == "depth_to_space":
            b = int(node.attrs.get("blocksize", 2))
            grids[out] = (b, b)
        elif node.op == "resize" and len(node.attrs.get("scales") or []) == 2:
            s = node.attrs["scales"]
            if all(abs(x - round(x)) < 1e-6 and x > 1 for x in s):
                grids[out] = (int(round(s[0])), int(round(s[1])))
    return kinds, grids


def _attr(node, name: str, default: float) -> float:
    """An attribute of the node or, after pointwise fusion, of the op at the top of its program."""
    program = node.attrs.get("program")
    attrs = dict(program[1]) if program and len(program) > 1 and isinstance(program[1], tuple) else node.attrs
    value = attrs.get(name, default)
    return float(value) if value is not None else default


# ops that carry token ids through unchanged in value (the ids an input holds reach a table through these)
_ID_CARRIERS = frozenset(
    {"identity", "cast", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "transpose", "slice"}
)


def vocabularies(graph: Graph) -> dict[str, int]:
    """Per input, the range its random token ids are drawn from: the smallest table it indexes, through reshapes and
    casts; `""` holds the graph's smallest table, for an input that reaches no table directly (ids turned into
    positions by arithmetic, say), since every lookup can take it. Drawing every input from the graph's smallest
    table put a BERT's or RoBERTa's words in {0, 1}: RoBERTa's padding id is 1, so half its tokens were padding."""
    tables = {n.name: n.params["table"].shape[0] for n in graph.nodes if n.op == "embedding" and "table" in n.params}
    smallest = min(tables.values(), default=2)
    out = {"": smallest}
    for value in graph.inputs:
        reached = [tables[n.name] for n in _tables_reached(value) if n.name in tables]
        out[value.name] = min(reached, default=smallest)
    return out


def _tables_reached(value):
    """The embedding lookups an integer input indexes, through reshapes and casts."""
    reached, front = [], [value]
    while front:
        carrier = front.pop()
        for node in carrier.consumers:
            if node.op == "embedding" and carrier is node.inputs[-1]:  # the ids (ONNX's Gather: after the table)
                reached.append(node)
            elif node.op in _ID_CARRIERS and node.inputs and node.inputs[0] is carrier:
                front.extend(node.outputs)
    return reached


def padding_ids(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Per input, the ids whose rows are zero in a table it indexes (a padding id's): real text puts them only where
    the attention mask is 0, and a norm of a zero row divides by its epsilon alone (a gradient ~10^6 times the
    others'), so the probe does not draw them."""
    out = {}
    for value in graph.inputs:
        rows = {i for n in _tables_reached(value) for i in n.params.get("padding_rows", ())}
        if rows:
            out[value.name] = tuple(sorted(rows))
    return out


@dataclass
class Draws:
    """How the probe makes integer inputs: token ids below the size of the table each indexes (`vocab`, "" for
    the rest); inputs the frontend held at the caller's example value (a diffusion model's timestep) at it."""

    vocab: dict[str, int]
    held: dict[str, np.ndarray]
    padding: dict[str, tuple[int, ...]] = field(default_factory=dict)  # ids not drawn (padding_ids)


def draws(graph: Graph) -> Draws:
    return Draws(
        vocabularies(graph), {v.name: v.array for v in graph.inputs if v.array is not None}, padding_ids(graph)
    )


def make_input(name: str, shape, dtype, plan: Draws, generator, data: dict | None, run: int, device):
    """N(0,1) floats, all-ones masks, uniform token ids (padding ids left out), held inputs at their value; or the next
    slice of --input-data."""
    import torch

    if data is not None and name in data:
        array = data[name]
        batch = shape[0] if shape else 1
        start = (run * batch) % max(array.shape[0], 1)
        rows = torch.as_tensor(array[start : start + batch])
        if rows.shape[0] < batch:
            rows = torch.cat([rows, torch.as_tensor(array[: batch - rows.shape[0]])])
        return rows.to(device=device, dtype=dtype).reshape(shape)
    held = plan.held.get(name)
    if held is not None and tuple(np.shape(held)) == tuple(shape):
        return torch.as_tensor(held).to(device=device, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    if "mask" in name.lower():
        return torch.ones(shape, dtype=dtype, device=device)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device=device)
    high = plan.vocab.get(name, plan.vocab[""])
    skipped = [i for i in plan.padding.get(name, ()) if i < high]
    ids = torch.randint(0, high - len(skipped), shape, generator=generator)
    for i in skipped:  # ascending: shift the ids at or past each skipped one up by one
        ids = ids + (ids >= i).to(ids.dtype)
    return ids.to(device=device, dtype=dtype)


def load_input_data(path: str | None) -> dict | None:
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"--input-data {path}: cannot read ({e})") from None


def by_input(data: dict | None, names: list[str]) -> dict | None:
    """--input-data arrays by input name; when the names differ (torch renames inputs), by position."""
    if data is None or all(n in data for n in names):
        return data
    if len(data) == len(names):
        return dict(zip(names, data.values()))
    raise UsageError(f"--input-data: arrays {sorted(data)} do not match the model's inputs {names}")


# The seed of every probe draw (inputs, cotangents, dropout masks). Not 0: a model initialised right after
# torch.manual_seed(0), as tests and examples do, drew its weights from the very stream a seed-0 generator replays,
# and the probe's inputs then lie along the weights' own directions (an attention layer's q and k measured 1.5x
# in the run whose input replayed their init). Any fixed seed keeps the reports byte-identical.
PROBE_SEED = 918_273_645


def probe_generator():
    """A fresh CPU generator at PROBE_SEED."""
    import torch

    return torch.Generator().manual_seed(PROBE_SEED)


def unit_cotangent(shape, generator):
    """A random direction with mean square exactly 1 (uniform on the sphere): E[c c^T] = I as for N(0, 1) entries,
    but without the draw's own energy fluctuation, which every gradient upstream would inherit (~sqrt(2/n) of G
    for an output of n entries: 16% for a 10-class head at batch 8)."""
    import torch

    c = torch.randn(shape, generator=generator)
    return c * torch.rsqrt(c.pow(2).mean().clamp_min(1e-30))


def seed_backward(outputs: list, loss: str, generator) -> None:
    """Unit-variance random cotangent at every output (default) or cross-entropy against random labels."""
    import torch

    floats = [o for o in outputs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
    if not floats:
        return
    if loss == "cross_entropy":
        logits = floats[0].reshape(-1, floats[0].shape[-1])
        labels = torch.randint(0, logits.shape[-1], (logits.shape[0],), generator=generator).to(logits.device)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        return
    cotangents = [unit_cotangent(o.shape, generator).to(o.device, o.dtype) for o in floats]
    torch.autograd.backward(floats, cotangents)


def release_memory() -> None:
    """Hand freed heap back to the OS after a run. Interpreted runs free tensors in another order than a
    module's forward, and glibc then keeps growing the heap run after run (measured: +850 MiB per GPT-2-small
    run, returned by malloc_trim)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def run_loop(options: ProbeOptions, runs_per_seed: int, step: Callable[[int, int], None], notes: list[str]) -> int:
    """Call step(seed, run) for every run; stops at the timeout. Returns the number of runs done."""
    total = options.seeds * runs_per_seed
    started, done = time.monotonic(), 0
    for seed in range(options.seeds):
        for run in range(runs_per_seed):
            if options.timeout is not None and time.monotonic() - started > options.timeout:
                notes.append(f"probe stopped at the {options.timeout:g} s timeout after {done} of {total} runs")
                return done
            run_started = time.monotonic()
            step(seed, run)
            if time.monotonic() - run_started > 0.2:  # only big runs fragment the heap enough to matter
                release_memory()
            done += 1
            if options.progress:
                options.progress(done, total)
    return done


def new_accumulator(graph: Graph) -> Accumulator:
    kinds, grids = measured_kinds(graph)
    return Accumulator(kinds=kinds, phase_grids=grids)
