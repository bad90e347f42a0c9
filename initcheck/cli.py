"""Command line: a thin caller of initcheck.analyze. Exit codes: 0 clean, 1 findings at or above
--fail-on, 2 usage or load error (one line on stderr, a traceback only with --debug)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from initcheck.errors import InitcheckError, UsageError

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other usage error
        self.exit(EXIT_ERROR, f"initcheck: error: {message}\n")


def parse_shape(text: str) -> tuple[str, tuple[tuple[int, ...], str | None]]:
    """NAME=DIMxDIM...[:dtype] -> (name, (shape, dtype or None))."""
    name, sep, spec = text.rpartition("=")
    if not sep or not name:
        raise UsageError(f"--input '{text}': expected NAME=DIMxDIM..., e.g. input=1x3x224x224")
    dims, _, dtype = spec.partition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UsageError(f"--input '{text}': dimensions must be integers, e.g. {name}=1x3x224x224") from None
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input '{text}': dimensions must be positive")
    return name, (shape, dtype or None)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initcheck", description="Check a network's initialisation layer by layer.")
    parser.add_argument("--version", action="version", version=f"initcheck {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("analyze", help="analyse a model file and print the per-layer table")
    a.add_argument("model", help="model file: .onnx, .pt2, TorchScript, or a .pt/.pth/.bin/.safetensors state dict")
    a.add_argument("--input", action="append", default=[], metavar="NAME=SHAPE[:DTYPE]",
                   help="input shape (and dtype for torch files), e.g. input_ids=1x128:int64 (repeatable)")
    a.add_argument("--arch", metavar="MODULE:FACTORY",
                   help="for a state dict: the callable that builds the model (imports that module)")
    a.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a whole pickled model (runs code from the file)")
    a.add_argument("--format", choices=["table", "json"], default="table")
    a.add_argument("--output", metavar="FILE", help="write the report to FILE instead of stdout")
    a.add_argument("--fail-on", choices=["info", "warning", "error", "never"], default="error",
                   help="exit 1 when a finding reaches this severity (default: error)")
    a.add_argument("--all-nodes", action="store_true", help="one row per node instead of one per layer")
    a.add_argument("--train", action="store_true", help="analyse batch norm and dropout as in training (batch statistics, active dropout)")
    a.add_argument("--degree", type=_positive, metavar="D",
                   help="graph attention: typical node degree when the graph does not carry its neighbour counts")
    p = a.add_argument_group("empirical probe (runs the model; on by default when torch/onnxruntime are installed)")
    p.add_argument("--no-probe", action="store_true", help="symbolic pass only")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch", type=_positive, default=16, help="samples per seed (default 16)")
    p.add_argument("--seeds", type=_positive, default=4, help="fresh input batches (default 4)")
    p.add_argument("--resample-weights", action="store_true",
                   help="each seed also permutes every weight tensor: instance-to-instance spread (PyTorch models)")
    p.add_argument("--input-data", metavar="FILE.npz", help="real inputs, arrays named like the model's inputs")
    p.add_argument("--loss", choices=["cotangent", "cross_entropy"], default="cotangent",
                   help="backward seed: unit-variance random cotangent (default) or cross-entropy on random labels")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop probing after this long, keep what was measured")
    a.add_argument("--debug", action="store_true", help="show tracebacks")
    e = sub.add_parser("explain", help="explain a finding code: meaning, formula, fix")
    e.add_argument("code")
    sub.add_parser("rules", help="list every finding code with its thresholds")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _probe_options(args):
    """ProbeOptions from the flags, or None when the probe is off or cannot run here (then said in a note)."""
    from initcheck.probes.common import ProbeOptions

    if args.no_probe:
        return None, None
    missing = [m for m in ("torch",) + (("onnxruntime",) if args.model.endswith(".onnx") else ()) if not _importable(m)]
    if missing:
        return None, f"probe skipped: {', '.join(missing)} not installed (pip install 'initcheck[probe,torch]')"
    return ProbeOptions(device=args.device, batch=args.batch, seeds=args.seeds, resample_weights=args.resample_weights,
                        loss=args.loss, input_data=args.input_data, timeout=args.timeout), None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _with_progress(options):
    """A transient progress bar on stderr for long probes (only on a terminal)."""
    import contextlib

    if options is None or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(transient=True, console=Console(stderr=True))
    task = progress.add_task("probing", total=None)
    options.progress = lambda done, total: progress.update(task, completed=done, total=total)
    return progress


def _version() -> str:
    from initcheck import __version__

    return __version__


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a report."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _analyze(args) -> int:
    from rich.console import Console

    from initcheck.api import analyze
    from initcheck.report.json_out import render_json
    from initcheck.report.table import make_console, render_table

    shapes = dict(parse_shape(s) for s in args.input)
    options, skipped = _probe_options(args)
    with _with_progress(options):
        report = analyze(args.model, shapes, arch=args.arch, trust_pickle=args.trust_pickle, all_nodes=args.all_nodes,
                         training=args.train, probe=options or False, degree=args.degree)
    if skipped:
        report.notes.append(skipped)
    if args.format == "json":
        text = render_json(report)
        if args.output:
            write_atomic(args.output, text)
        else:
            sys.stdout.write(text)
    elif args.output:
        console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
        render_table(report, console)
        write_atomic(args.output, console.export_text())
    else:
        render_table(report, make_console())
    return EXIT_FINDINGS if report.fails(args.fail_on) else EXIT_OK


def _explain(args) -> int:
    from initcheck.checks.codes import CODES

    code = CODES.get(args.code.upper())
    if code is None:
        raise UsageError(f"unknown code '{args.code}' (known: {', '.join(sorted(CODES))})")
    print(f"{code.code} {code.name} (default severity: {code.severity})\n")
    for title, text in (("What", code.summary), ("Formula", code.formula), ("Fix", code.fix), ("Thresholds", code.thresholds)):
        print(f"{title}:\n  {text}\n")
    return EXIT_OK


def _rules(args) -> int:
    from initcheck.checks.codes import CODES

    for c in CODES.values():
        print(f"{c.code}  {c.name:26s} {c.severity:8s} {c.thresholds}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"analyze": _analyze, "explain": _explain, "rules": _rules}[args.command]
    try:
        return handler(args)
    except InitcheckError as e:
        print(f"initcheck: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("initcheck: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: still one line unless --debug
        if getattr(args, "debug", False) or os.environ.get("INITCHECK_DEBUG"):
            raise
        print(f"initcheck: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
