"""Command line (typer): a thin caller of initcheck's analysis. Exit codes: 0 clean, 1 findings at or above
--fail-on, 2 usage or load error (one line on stderr, a traceback only with --debug), 130 interrupted."""

from __future__ import annotations

import math
import os
import sys
from types import SimpleNamespace
from typing import Annotated, Literal

import typer

from initcheck.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, InitcheckError, UsageError, debugging, one_line

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="initcheck",
    help="Check a network's initialisation layer by layer: signal and gradient flow, why not, and the fix.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
PROBE = "Empirical probe (runs the model; on by default when torch is installed)"
LIMITS = "Limits (for untrusted files)"
OUTPUT = "Output"


def _positive(kind: type, what: str):
    """A parser: a finite number of `kind` above zero, else one clear usage line."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < math.inf:
            raise typer.BadParameter(f"expected a positive {what}, got '{text}'")
        return value

    return parse


def _version(show: bool) -> None:
    if show:
        from initcheck import __version__

        print(f"initcheck {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Check a network's initialisation layer by layer: signal and gradient flow, why not, and the fix."""


@app.command("analyze", no_args_is_help=False)
def _analyze(
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL",
            help="model files: .onnx, .pt2, TorchScript, or .pt/.pth/.bin/.safetensors state dicts",
            show_default=False,
        ),
    ],
    input: Annotated[
        list[str],
        typer.Option(
            "--input",
            metavar="NAME=SHAPE[:DTYPE]",
            help="input shape (and dtype for torch files), e.g. input_ids=1x128:int64 (repeatable)",
            show_default=False,
        ),
    ] = [],  # noqa: B006  (typer reads the default; it is never mutated)
    arch: Annotated[
        str | None,
        typer.Option(
            metavar="MODULE:FACTORY", help="for a state dict: the callable that builds the model (imports that module)"
        ),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="allow unpickling a whole pickled model (runs code from the file)")
    ] = False,
    format: Annotated[
        Literal["table", "json", "markdown", "sarif", "junit", "html"] | None,
        typer.Option(
            "--format",
            help="what to print on stdout (default: the table; one summary line per model with --output)",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    output: Annotated[
        list[str],
        typer.Option(
            "--output",
            metavar="FILE",
            help="write a report to FILE, format from the suffix: .json .md .sarif .xml (JUnit) .html .txt; repeatable",
            show_default=False,
            rich_help_panel=OUTPUT,
        ),
    ] = [],  # noqa: B006
    plot: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="signal-propagation plot, .png or .svg (needs matplotlib: pip install 'initcheck[plot]')",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="one summary line per model on stdout; nothing else but errors",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    color: Annotated[
        Literal["auto", "always", "never"],
        typer.Option(
            help="colour in the table (auto: on a terminal, as NO_COLOR / FORCE_COLOR say)", rich_help_panel=OUTPUT
        ),
    ] = "auto",
    fail_on: Annotated[
        Literal["info", "warning", "error", "never"] | None,
        typer.Option(help="exit 1 when a finding reaches this severity (default: the config's, else error)"),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="config file (default: nearest .initcheck.yaml or pyproject.toml with \\[tool.initcheck], from the "
            "model's folder upward)",
        ),
    ] = None,
    no_config: Annotated[bool, typer.Option("--no-config", help="ignore config files")] = False,
    baseline: Annotated[
        str | None, typer.Option(metavar="FILE", help="fail only on findings that are new or worse than in FILE")
    ] = None,
    write_baseline: Annotated[
        str | None, typer.Option(metavar="FILE", help="record the current findings in FILE (exit 0)")
    ] = None,
    all_nodes: Annotated[bool, typer.Option("--all-nodes", help="one row per node instead of one per layer")] = False,
    all_layers: Annotated[
        bool, typer.Option("--all-layers", help="one table row per layer in repeated blocks too (not grouped)")
    ] = False,
    train: Annotated[
        bool | None,
        typer.Option(
            "--train", help="analyse batch norm and dropout as in training (batch statistics, active dropout)"
        ),
    ] = None,
    degree: Annotated[
        int | None,
        typer.Option(
            metavar="D",
            parser=_positive(int, "integer"),
            help="graph attention: typical node degree when the graph does not carry its neighbour counts",
        ),
    ] = None,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="symbolic pass only", rich_help_panel=PROBE)] = False,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:N or auto (default)", rich_help_panel=PROBE)
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(parser=_positive(int, "integer"), help="samples per seed (default 16)", rich_help_panel=PROBE),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(parser=_positive(int, "integer"), help="fresh input batches (default 4)", rich_help_panel=PROBE),
    ] = None,
    resample_weights: Annotated[
        bool,
        typer.Option(
            "--resample-weights",
            help="each seed also permutes every weight tensor: instance-to-instance spread (PyTorch models)",
            rich_help_panel=PROBE,
        ),
    ] = False,
    input_data: Annotated[
        str | None,
        typer.Option(
            metavar="FILE.npz", help="real inputs, arrays named like the model's inputs", rich_help_panel=PROBE
        ),
    ] = None,
    loss: Annotated[
        Literal["cotangent", "cross_entropy"] | None,
        typer.Option(
            help="backward seed: unit-variance random cotangent (default) or cross-entropy on random labels",
            rich_help_panel=PROBE,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="stop probing after this long, keep what was measured", rich_help_panel=PROBE
        ),
    ] = None,
    probe_dtype: Annotated[
        Literal["float32", "bfloat16", "float16"] | None,
        typer.Option(
            help="run the probe in mixed precision (autocast), as training does; statistics stay float32 (PyTorch)",
            rich_help_panel=PROBE,
        ),
    ] = None,
    probe_layers: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            parser=_positive(int, "integer"),
            help="probe only the first N blocks of the repeated stack (default: as many as fit in memory; PyTorch)",
            rich_help_panel=PROBE,
        ),
    ] = None,
    max_elements: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            parser=_positive(int, "integer"),
            help="refuse any tensor or shape with more than N elements (default 2^31)",
            rich_help_panel=LIMITS,
        ),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            parser=_positive(float, "number"),
            help="give up on a model after this long (one error line; the other models go on)",
            rich_help_panel=LIMITS,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> int:
    """Analyse model files and print the per-layer table."""
    from initcheck.cli_analyze import run_analyze

    if quiet and format is not None:
        raise UsageError("--quiet prints one summary line per model; --format chooses another stdout: give one")
    return run_analyze(SimpleNamespace(**{k: v for k, v in locals().items() if k != "run_analyze"}))


@app.command("fix")
def _fix_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="an .onnx or .pt2 file", show_default=False)],
    output: Annotated[
        str | None, typer.Option("--output", "-o", metavar="FILE", help="where the repaired model goes (same form)")
    ] = None,
    only: Annotated[
        list[str], typer.Option("--only", metavar="CODE", help="fix only these codes (repeatable)", show_default=False)
    ] = [],  # noqa: B006  (typer reads the default; it is never mutated)
    skip: Annotated[
        list[str],
        typer.Option("--skip", metavar="CODE", help="leave these codes alone (repeatable)", show_default=False),
    ] = [],  # noqa: B006
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and the init code; write nothing")] = False,
    input: Annotated[
        list[str],
        typer.Option("--input", metavar="NAME=SHAPE[:DTYPE]", help="input shape (repeatable)", show_default=False),
    ] = [],  # noqa: B006
    arch: Annotated[str | None, typer.Option(metavar="MODULE:FACTORY", help="as for analyze")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="as for analyze")] = False,
    config: Annotated[str | None, typer.Option(metavar="FILE", help="config file (default: discovered)")] = None,
    no_config: Annotated[bool, typer.Option("--no-config", help="ignore config files")] = False,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="prove with the symbolic pass only")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> int:
    """Rescale the weights the findings name, write the repaired model, and prove it (exit 1 if the proof fails)."""
    from initcheck.cli_fix import run_fix

    return run_fix(SimpleNamespace(**{k: v for k, v in locals().items() if k != "run_fix"}))


@app.command("explain")
def _explain_command(code: Annotated[str, typer.Argument(metavar="CODE", help="a finding code, e.g. IC102")]) -> int:
    """Explain a finding code: meaning, formula, fix."""
    return _explain(code)


@app.command("rules")
def _rules_command() -> int:
    """List every finding code with its thresholds, and the ops each frontend translates."""
    return _rules()


def _explain(code_name: str) -> int:
    from initcheck.codes import CODES

    code = CODES.get(code_name.upper())
    if code is None:
        raise UsageError(f"unknown code '{code_name}' (known: {', '.join(sorted(CODES))})")
    print(f"{code.code} {code.name} (default severity: {code.severity})\n")
    for title, text in (
        ("What", code.summary),
        ("Formula", code.formula),
        ("Fix", code.fix),
        ("Thresholds", code.thresholds),
    ):
        print(f"{title}:\n  {text}\n")
    return EXIT_OK


def _rules() -> int:
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
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    command = typer.main.get_command(app)
    try:
        # the command itself, not its main(): main() turns Ctrl-C and a closed pipe into bare exit codes
        with command.make_context("initcheck", argv) as ctx:
            return command.invoke(ctx) or EXIT_OK
    except click_errors.NoArgsIsHelpError:  # the usage is on stdout; say why it came
        print("initcheck: error: no command given (analyze, fix, explain or rules)", file=sys.stderr)
        return EXIT_ERROR
    except typer.Exit as e:  # --help, --version
        return e.exit_code
    except click_errors.ClickException as e:  # one line and exit 2, like every other usage error
        message = e.format_message().replace("Value error, ", "")  # typer's wording of a choice's ValueError
        print(f"initcheck: error: {one_line(message)}", file=sys.stderr)
        return EXIT_ERROR
    except InitcheckError as e:
        print(f"initcheck: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, typer.Abort):  # the shell convention for SIGINT: 128 + 2
        print("initcheck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `initcheck rules | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # a bug: still one line unless --debug
        if "--debug" in argv or debugging():
            raise
        print(
            f"initcheck: internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
