"""`initcheck analyze MODEL...`: per model, find its config, analyse, compare with a baseline; then write every
requested output and return the aggregate exit code (2 if a model could not be analysed, else 1 if one fails
its gate, else 0). One broken file does not stop the others."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from initcheck.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, InitcheckError, UsageError, debugging, one_line


def run_analyze(args) -> int:
    from initcheck import baseline
    from initcheck.report.model import ModelResult
    from initcheck.report.outputs import check_writable, format_for

    outputs = [(str(path), format_for(str(path))) for path in args.output]
    if args.plot:
        from initcheck.report.plot import check_plot

        check_plot(args.plot)
        check_writable(args.plot, "--plot")
    for path in [p for p, _ in outputs] + ([args.write_baseline] if args.write_baseline else []):
        check_writable(path, "--output" if path != args.write_baseline else "--write-baseline")
    entries = baseline.load(Path(args.baseline)) if args.baseline else None
    results, said = [], set[str]()
    for model in args.models:
        result = _one(model, args, said)
        if result.report is not None and entries is not None:
            baseline.compare(result.report, entries.get(baseline.model_key(model, Path(args.baseline)), []))
        results.append(result)
    single_error = len(results) == 1 and results[0].report is None
    if single_error:  # one model, one line: exactly as any other usage or load error
        raise InitcheckError(results[0].error)
    for model_result in results:
        if model_result.report is None:
            error = model_result.error or ""
            print(
                f"initcheck: error: {error if model_result.model in error else f'{model_result.model}: {error}'}",
                file=sys.stderr,
            )
    _write_outputs(results, outputs, args)
    if args.write_baseline:
        write_atomic(
            args.write_baseline, baseline.render([r.report for r in results if r.report], Path(args.write_baseline))
        )
    if not args.quiet:
        _say_baseline_changes(results)
    if any(r.report is None for r in results):
        return EXIT_ERROR
    if args.write_baseline:
        return EXIT_OK  # recording the current state accepts it
    return EXIT_FINDINGS if any(isinstance(r, ModelResult) and r.failed for r in results) else EXIT_OK


def _one(model: str, args, said: set[str]):
    """Analyse one model with its config; a failure becomes the result's one-line error."""
    from initcheck.api import analyze_with
    from initcheck.config import parse_shape
    from initcheck.limits import TimeLimitExceeded, time_limit
    from initcheck.options import PROBE_SETTINGS, probe_flag, resolve
    from initcheck.report.model import ModelResult

    try:
        options = resolve(
            _config(model, args),
            shapes=dict(parse_shape(s) for s in args.input),
            arch=args.arch,
            trust_pickle=args.trust_pickle,
            all_nodes=args.all_nodes,
            all_layers=args.all_layers,
            training=args.train,
            probe=False if args.no_probe else None,
            probe_flags={name: getattr(args, probe_flag(name).replace("-", "_")) for name in PROBE_SETTINGS},
            degree=args.degree,
            fail_on=args.fail_on,
            max_elements=args.max_elements,
            time_limit=args.time_limit,
            model=model,
        )
        if (
            options.probe_skipped and options.probe_skipped not in said and not args.quiet
        ):  # said first, not after the table
            print(f"initcheck: {options.probe_skipped}", file=sys.stderr)
            said.add(options.probe_skipped)
        progress, options = _with_progress(options)
        with progress, time_limit(options.time_limit, model):
            report = analyze_with(model, options)
        return ModelResult(model, report, None, options.fail_on)
    except (InitcheckError, TimeLimitExceeded) as e:
        return ModelResult(model, None, one_line(e), args.fail_on or "error")
    except Exception as e:  # a bug: one line per model unless --debug
        if args.debug or debugging():
            raise
        return ModelResult(
            model,
            None,
            f"internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
            args.fail_on or "error",
        )


def _config(model: str, args):
    from initcheck.config import Config, discover, load

    if args.no_config:
        return Config().for_model(Path(model))
    path = Path(args.config) if args.config else discover(Path(model))
    return load(path).for_model(Path(model)) if path else Config().for_model(Path(model))


def _with_progress(options):
    """A transient progress bar on stderr for long probes (only on a terminal): (context, options reporting to it)."""
    import contextlib
    from dataclasses import replace

    if options.probe is None or not sys.stderr.isatty():
        return contextlib.nullcontext(), options
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(transient=True, console=Console(stderr=True))
    task = progress.add_task("probing", total=None)
    report = lambda done, total: progress.update(task, completed=done, total=total)  # noqa: E731
    return progress, replace(options, probe=replace(options.probe, progress=report))


def _write_outputs(results, outputs, args) -> None:
    from initcheck import __version__
    from initcheck.report.outputs import render
    from initcheck.report.table import make_console, render_results, summary_lines

    for path, fmt in outputs:
        write_atomic(path, render(fmt, results, __version__))
    if args.plot:
        _write_plots(results, args.plot)
    fmt = args.format or ("summary" if outputs or args.quiet else "table")
    if fmt == "table":
        render_results(results, make_console(args.color))
    elif fmt == "summary":  # reports went to files: one line per model on stdout
        sys.stdout.write("\n".join(line.strip() for line in summary_lines(results)) + "\n")
    else:
        sys.stdout.write(render(fmt, results, __version__))


def _say_baseline_changes(results) -> None:
    """What changed against the baseline, on stderr (stdout may carry a machine format)."""
    for r in results:
        if r.report is None:
            continue
        for f in r.report.findings:
            if f.baseline in ("new", "worsened"):
                print(
                    f"initcheck: {r.model}: {f.baseline}: {f.code} [{f.severity}] at {f.scope or f.node}",
                    file=sys.stderr,
                )
        for old in r.report.fixed:
            print(f"initcheck: {r.model}: fixed: {old.get('code')} at {old.get('layer')}", file=sys.stderr)


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a report."""
    import tempfile

    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--output {path}: is a folder")
    fd, tmp = tempfile.mkstemp(
        dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())  # not mkstemp's 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_plots(results, path: str) -> None:
    """One plot per analysed model: FILE itself for one model, FILE-<model stem> for several."""
    from initcheck.report.plot import save

    reports = [r for r in results if r.report is not None]
    target = Path(path)
    for result in reports:
        name = (
            target if len(reports) == 1 else target.with_name(f"{target.stem}-{Path(result.model).stem}{target.suffix}")
        )
        save(result.report, name)
