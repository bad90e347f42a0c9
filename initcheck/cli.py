"""Command line: a thin caller of initcheck.analyze. Exit codes: 0 clean, 1 findings at or above
--fail-on, 2 usage or load error (one line on stderr, a traceback only with --debug)."""

from __future__ import annotations

import argparse
import os
import sys

from initcheck.config import parse_shape  # noqa: F401  (was public here)
from initcheck.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, InitcheckError, UsageError, debugging, one_line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other usage error
        self.exit(EXIT_ERROR, f"initcheck: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="initcheck", description="Check a network's initialisation layer by layer.")
    parser.add_argument("--version", action="version", version=f"initcheck {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("analyze", help="analyse model files and print the per-layer table")
    a.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="model files: .onnx, .pt2, TorchScript, or .pt/.pth/.bin/.safetensors state dicts",
    )
    a.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=SHAPE[:DTYPE]",
        help="input shape (and dtype for torch files), e.g. input_ids=1x128:int64 (repeatable)",
    )
    a.add_argument(
        "--arch",
        metavar="MODULE:FACTORY",
        help="for a state dict: the callable that builds the model (imports that module)",
    )
    a.add_argument(
        "--trust-pickle", action="store_true", help="allow unpickling a whole pickled model (runs code from the file)"
    )
    a.add_argument(
        "--format",
        choices=["table", "json", "markdown", "sarif", "junit"],
        help="what to print on stdout (default: the table; one summary line per model with --output)",
    )
    a.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="FILE",
        help="write a report to FILE, format from the suffix: .json .md .sarif .xml (JUnit) .txt; repeatable",
    )
    a.add_argument(
        "--fail-on",
        choices=["info", "warning", "error", "never"],
        help="exit 1 when a finding reaches this severity (default: the config's, else error)",
    )
    a.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: nearest .initcheck.yaml or pyproject.toml "
        "with [tool.initcheck], from the model's folder upward)",
    )
    a.add_argument("--no-config", action="store_true", help="ignore config files")
    a.add_argument("--baseline", metavar="FILE", help="fail only on findings that are new or worse than in FILE")
    a.add_argument("--write-baseline", metavar="FILE", help="record the current findings in FILE (exit 0)")
    a.add_argument("--all-nodes", action="store_true", help="one row per node instead of one per layer")
    a.add_argument(
        "--train",
        action="store_const",
        const=True,
        default=None,
        help="analyse batch norm and dropout as in training (batch statistics, active dropout)",
    )
    a.add_argument(
        "--degree",
        type=_positive,
        metavar="D",
        help="graph attention: typical node degree when the graph does not carry its neighbour counts",
    )
    p = a.add_argument_group("empirical probe (runs the model; on by default when torch/onnxruntime are installed)")
    p.add_argument("--no-probe", action="store_true", help="symbolic pass only")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--batch", type=_positive, help="samples per seed (default 16)")
    p.add_argument("--seeds", type=_positive, help="fresh input batches (default 4)")
    p.add_argument(
        "--resample-weights",
        action="store_true",
        help="each seed also permutes every weight tensor: instance-to-instance spread (PyTorch models)",
    )
    p.add_argument("--input-data", metavar="FILE.npz", help="real inputs, arrays named like the model's inputs")
    p.add_argument(
        "--loss",
        choices=["cotangent", "cross_entropy"],
        help="backward seed: unit-variance random cotangent (default) or cross-entropy on random labels",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop probing after this long, keep what was measured"
    )
    lim = a.add_argument_group("limits (for untrusted files)")
    lim.add_argument(
        "--max-elements",
        type=_positive,
        metavar="N",
        help="refuse any tensor or shape with more than N elements (default 2^31)",
    )
    lim.add_argument(
        "--time-limit",
        type=_positive_float,
        metavar="SECONDS",
        help="give up on a model after this long (one error line; the other models go on)",
    )
    a.add_argument("--debug", action="store_true", help="show tracebacks")
    e = sub.add_parser("explain", help="explain a finding code: meaning, formula, fix")
    e.add_argument("code")
    sub.add_parser("rules", help="list every finding code with its thresholds")
    return parser


def _positive_of(kind: type, what: str):
    """An argparse type: a finite number of `kind` above zero, else one clear usage line."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got '{text}'")
        return value

    return parse


_positive = _positive_of(int, "integer")
_positive_float = _positive_of(float, "number")


def _version() -> str:
    from initcheck import __version__

    return __version__


def _analyze(args) -> int:
    from initcheck.cli_analyze import run_analyze

    return run_analyze(args)


def _explain(args) -> int:
    from initcheck.codes import CODES

    code = CODES.get(args.code.upper())
    if code is None:
        raise UsageError(f"unknown code '{args.code}' (known: {', '.join(sorted(CODES))})")
    print(f"{code.code} {code.name} (default severity: {code.severity})\n")
    for title, text in (
        ("What", code.summary),
        ("Formula", code.formula),
        ("Fix", code.fix),
        ("Thresholds", code.thresholds),
    ):
        print(f"{title}:\n  {text}\n")
    return EXIT_OK


def _rules(args) -> int:
    """Every finding code with its default severity and thresholds, then the ops the symbolic pass covers."""
    from initcheck.codes import CODES, DEFAULTS

    print(
        "code   name                       severity thresholds (config: [tool.initcheck.thresholds] CODE = {name = value})"
    )
    for c in CODES.values():
        limits = ", ".join(f"{k}={v:g}" for k, v in DEFAULTS.get(c.code, {}).items()) or "-"
        print(f"{c.code}  {c.name:26s} {c.severity:8s} {limits}\n       {c.thresholds}")
    for title, ops in _coverage().items():
        print(f"\n{title} ({len(ops)}):")
        print("  " + ", ".join(ops))
    return EXIT_OK


def _coverage() -> dict[str, list[str]]:
    from initcheck.frontends import onnx_ops, torch_layers, torch_ops  # noqa: F401  (torch_layers registers ATen handlers)
    from initcheck.rules import FORWARD, load_all

    load_all()
    return {
        "IR ops with a rule": sorted(FORWARD),
        "ONNX ops translated": sorted(onnx_ops.HANDLERS),
        "ATen ops translated": sorted(torch_ops.HANDLERS),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"analyze": _analyze, "explain": _explain, "rules": _rules}[args.command]
    try:
        return handler(args)
    except InitcheckError as e:
        print(f"initcheck: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # the shell convention for SIGINT: 128 + 2
        print("initcheck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `initcheck rules | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # a bug: still one line unless --debug
        if getattr(args, "debug", False) or debugging():
            raise
        print(
            f"initcheck: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
