"""The Python API: `initcheck.analyze(model, ...) -> Report`. The CLI is one caller of it."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from initcheck import frontends
from initcheck.analysis.agreement import resting_on_measurement, uninformative_note, with_measurements, with_quotes
from initcheck.analysis.blocks import repeated_blocks
from initcheck.analysis.criticality import susceptibilities, with_susceptibilities
from initcheck.analysis.layers import build_rows, depth_and_width, output_spread, width_regime
from initcheck.analysis.symbolic import run_symbolic
from initcheck.checks import CheckContext, finish, run_checks
from initcheck.codes import overridden
from initcheck.config import Config
from initcheck.config import load as load_config
from initcheck.errors import InitcheckError, UsageError
from initcheck.ir import Graph
from initcheck.limits import elements_at_most
from initcheck.norm_patterns import recognize_normalizations
from initcheck.options import Options, ProbeOptions, resolve
from initcheck.passes import fuse_pointwise
from initcheck.policy import apply_policy
from initcheck.report.model import SEVERITIES, Coverage, Report, severity_rank

if TYPE_CHECKING:
    from initcheck.repair import FixResult


class InitcheckFailed(AssertionError):
    """Raised by `check` when findings reach the requested severity; carries the report."""

    def __init__(self, report: Report, fail_on: str):
        self.report = report
        bad = [f for f in report.findings if severity_rank(f.severity) >= severity_rank(fail_on)]
        lines = [f"{f.code} [{f.severity}] {f.message} (fix: {f.fix})" for f in bad]
        super().__init__(f"initcheck: {len(bad)} finding(s) at or above '{fail_on}':\n  " + "\n  ".join(lines))


def analyze(
    model,
    inputs=None,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    all_nodes: bool = False,
    training: bool | None = None,
    probe: bool | ProbeOptions = False,
    degree: int | None = None,
    config: Config | str | Path | None = None,
) -> Report:
    """Analyse a model file or a live torch nn.Module and return the report.

    model: a path (.onnx, .pt2, TorchScript, or a state dict with `arch`) or an nn.Module.
    inputs: for files, shapes of inputs with dynamic dimensions, e.g. {"input_ids": ((1, 128), "int64")} or
      {"x": (1, 3, 224, 224)}; for a module, example inputs (a tensor, a tuple of tensors, or a dict of keyword
      tensors) exactly as forward() takes them.
    arch: "package.module:factory" returning the nn.Module a state dict belongs to (imports that code).
    trust_pickle: allow unpickling a whole pickled model (runs code from the file).
    all_nodes: one table row per node instead of one per layer.
    training: analyse batch norm and dropout as in training (default: the module's own mode; eval for files).
    probe: also run the model and measure the same quantities (True, or ProbeOptions for device, batch,
      seeds, ...). The CLI probes by default; the API does not, so a pre-training check stays cheap.
    degree: for graph attention whose graph does not carry its neighbour counts, the typical node degree.
    config: a Config or a config file (pyproject.toml / .initcheck.yaml) whose thresholds, severities, ignores
      and deviations apply; its per-model inputs, degree, arch and train fill what the arguments leave unset.
      The API never discovers a config on its own (the CLI does).
    """
    options = _api_options(
        model,
        inputs,
        config,
        arch=arch,
        trust_pickle=trust_pickle,
        all_nodes=all_nodes,
        training=training,
        probe=probe,
        degree=degree,
    )
    return analyze_with(model, options, example_inputs=inputs if _is_module(model) else None)


def _api_options(model, inputs, config, **flags) -> Options:
    """The API's arguments resolved like the CLI's flags: a module's inputs are examples, a file's are shapes."""
    module = _is_module(model)
    return resolve(
        _config_for(config, model), shapes=None if module else inputs, model=None if module else model, **flags
    )


def analyze_with(model, options: Options, example_inputs=None) -> Report:
    """analyze() once the options are resolved (the CLI resolves its flags and calls this)."""
    # overflowing moments become inf and are reported as findings, not warnings; no tensor beyond the limit
    with np.errstate(all="ignore"), warnings.catch_warnings(), elements_at_most(options.max_elements):
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "mean of empty slice" and the like
        if _is_module(model):
            graph, executable = _module_graph(model, example_inputs, options.training)
            training = model.training if options.training is None else options.training
        else:
            graph, executable = frontends.load_model(
                Path(model),
                options.shapes or None,
                bool(options.training),
                arch=options.arch,
                trust_pickle=options.trust_pickle,
                stream=options.probe is None,
            )
            training = bool(options.training)
        return analyze_graph(graph, options, "train" if training else "eval", executable)


def _config_for(config, model) -> Config:
    if config is None:
        return Config()
    if not isinstance(config, Config):
        config = load_config(Path(config))
    return config if _is_module(model) else config.for_model(Path(model))


def fix(
    model,
    inputs=None,
    *,
    output: str | Path | None = None,
    only: set[str] | None = None,
    skip: set[str] | None = None,
    dry_run: bool = False,
    inplace: bool = False,
    probe: bool | ProbeOptions = False,
    arch: str | None = None,
    trust_pickle: bool = False,
    config: Config | str | Path | None = None,
):
    """Apply the numeric repairs of the findings and prove them: returns a FixResult (plan, before and after
    reports, proof, init code). A live module gets a repaired copy (`result.model`; the module itself with
    `inplace=True`); a file gets `output` in its own form (ONNX, .pt2), never the input overwritten."""
    options = _api_options(model, inputs, config, arch=arch, trust_pickle=trust_pickle, probe=probe)
    example_inputs = inputs if _is_module(model) else None
    return fix_with(model, options, example_inputs, output, only, skip, dry_run, inplace)


def check(model, inputs=None, *, fail_on: str = "error", **options) -> Report:
    """analyze(), then raise InitcheckFailed if a finding reaches `fail_on`: one line in a test or before fit()."""
    if fail_on not in SEVERITIES:
        raise ValueError(f"fail_on must be one of {SEVERITIES}")
    report = analyze(model, inputs, **options)
    if report.fails(fail_on):
        raise InitcheckFailed(report, fail_on)
    return report


def _is_module(model) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _module_graph(module, inputs, training: bool | None):
    import torch

    if inputs is None:
        raise InitcheckError("analyze(module, inputs): pass example inputs as forward() takes them")
    kwargs = None
    args: tuple
    if isinstance(inputs, dict):
        args, kwargs = (), inputs
    elif isinstance(inputs, torch.Tensor):
        args = (inputs,)
    else:
        args = tuple(inputs)
    mode = module.training if training is None else training
    return frontends.module_graph(module, args, mode, type(module).__name__, kwargs)


def analyze_graph(graph: Graph, options: Options | None = None, mode: str = "eval", executable=None) -> Report:
    """Analyse a graph already in the IR; `executable` (from the frontend) is what the probe runs, if it runs."""
    options = options or Options()
    with overridden(options.config.thresholds), np.errstate(all="ignore"):
        return _analyze_graph(graph, options, mode, executable)


def _analyze_graph(graph: Graph, options: Options, mode: str, executable) -> Report:
    fuse_pointwise(graph)  # the IR is the analysis's own: the two rewrite it in place, once
    recognize_normalizations(graph)
    notes = list(graph.notes)  # from loading
    if any(n.attrs.get("untrained_stats") for n in graph.nodes):
        notes.append(
            "batch norms in eval form with untrained running statistics (mean 0, var 1) are analysed "
            "with batch statistics, as they will train"
        )
    result = run_symbolic(graph)
    rows = build_rows(graph, result, options.all_nodes)
    depth, width = depth_and_width(graph)
    chis = susceptibilities(graph, result)
    rows = with_susceptibilities(rows, chis)
    ctx = CheckContext(graph, result, rows, depth, width, chis, degree=options.degree)
    findings, check_notes = run_checks(ctx)
    probe_summary = None
    if options.probe is not None and executable is not None:
        rows, findings, check_notes, probe_summary = _probe_stage(
            ctx, findings, check_notes, executable, options.probe, options.all_nodes
        )
    findings = finish(findings)
    if note := uninformative_note(rows, probe_summary is not None):
        notes.append(note)
    if graph.folded_normalization:
        findings = [_fold_consequence(f) for f in findings]
    findings, suppressed = apply_policy(findings, options.config)
    spread = output_spread(graph, result)
    return Report(
        model=graph.source,
        producer=graph.producer_name,
        opset=graph.opset,
        mode=mode,
        inputs={v.name: list(v.shape or ()) for v in graph.inputs},
        depth=depth,
        width=width,
        layers=rows,
        findings=findings,
        coverage=_coverage(result),
        notes=notes + check_notes + ([options.probe_skipped] if options.probe_skipped else []),
        all_nodes=options.all_nodes,
        probe=probe_summary,
        instance_spread=spread[0] if spread else None,
        width_regime=width_regime(spread[0]) if spread else "",
        blocks=[] if options.all_layers or options.all_nodes else repeated_blocks(rows),
        config=options.config.source,
        suppressed=suppressed,
    )


def _probe_stage(
    ctx: CheckContext, findings: list, notes: list[str], executable, options: ProbeOptions, all_nodes: bool
):
    """Run the probe; rows with measurements, findings with their measured numbers plus the probe-stage checks'
    (agreement, cross-check, failure), notes, and the probe's summary (None when it could not run)."""
    measured, failure = _run_probe(ctx, executable, options)
    rows, summary = ctx.rows, None
    if measured is not None:
        rows = with_measurements(rows, ctx.result.estimates(), measured)
        resting = resting_on_measurement(rows, ctx.graph, ctx.result, measured, all_nodes)
        if resting is not rows:  # rows whose prediction says little about this network: judged as measured
            findings, notes = run_checks(replace(ctx, rows=resting))
        findings = with_quotes(findings, ctx.graph, measured)
        summary = _probe_summary(measured)
    probe_findings, probe_notes = run_checks(replace(ctx, rows=rows, probe=measured, probe_error=failure), "probe")
    return rows, findings + probe_findings, notes + probe_notes, summary


# what a missing batch norm changes: the scale of signals and gradients, their spread, and zero-folded weights
_FOLD_CONSEQUENCES = {"IC101", "IC102", "IC111", "IC112", "IC505", "IC511", "IC512", "IC513"}


def _fold_consequence(finding):
    """In a file whose batch norms an eval-mode export folded away, a finding about scale describes the folded
    file, not the network as it will train: information, with the reason (the note says how to check it)."""
    if finding.code not in _FOLD_CONSEQUENCES or finding.severity == "info":
        return finding
    if finding.value is not None and math.isinf(finding.value):  # no norm brings back a signal that is gone
        return finding
    return replace(
        finding,
        severity="info",
        declared="batch norms folded into the convolutions by an eval-mode export: not the model as it trains",
    )


def _run_probe(ctx: CheckContext, executable, options: ProbeOptions):
    """(measurements, None), or (None, the error) when the model does not run here: the symbolic results stand."""
    from initcheck.probes import plan_for, run_probe

    try:
        predicted_G = {name: e.G for name, e in ctx.result.estimates().items() if e.G is not None}
        plan = plan_for(executable, ctx.graph, ctx.rows, options, predicted_G, _shared_shares(ctx.result))
        return run_probe(executable, ctx.graph, options, plan), None
    except InitcheckError:
        raise  # the user's options are wrong (device, input data): say so
    except Exception as e:
        return None, e


def _shared_shares(result) -> dict[str, float]:
    """Per value, the share of its predicted gradient the same at every position of a sample."""
    return {
        value.name: min(shared / result.backward[value], 1.0)
        for value, shared in result.backward_shared.items()
        if result.backward.get(value, 0.0) > 0
    }


def _probe_summary(measured) -> dict:
    return {
        "device": measured.device,
        "samples": measured.samples,
        "runs": measured.runs,
        "loss": measured.loss,
        "resampled_weights": measured.resampled_weights,
        "max_relative_difference": measured.max_relative_difference,
        "max_difference_at": measured.max_difference_at,
        "notes": list(measured.notes),
    }


def _coverage(result) -> Coverage:
    buckets: dict[str, Counter] = {"modeled": Counter(), "approximated": Counter(), "unsupported": Counter()}
    for node, status in result.status.items():
        buckets[status][node.source_op] += 1
    return Coverage(*(dict(sorted(buckets[k].items())) for k in ("modeled", "approximated", "unsupported")))


def fix_with(
    model,
    options,
    example_inputs=None,
    output=None,
    only: set[str] | None = None,
    skip: set[str] | None = None,
    dry_run: bool = False,
    inplace: bool = False,
) -> FixResult:
    """Analyse, plan, write the repaired model (a module copy, or `output` in the input file's form), analyse it
    with the same options, and prove the fix."""
    from initcheck.repair import FixResult, init_code, merged, plan_fixes, prove
    from initcheck.repair_write import check_output

    module = _is_module(model)
    if not module and not dry_run:
        if output is None:
            raise UsageError("fix: give -o FILE for the repaired model (or --dry-run for the plan)")
        check_output(Path(model), Path(output))
    before = analyze_with(model, options, example_inputs)
    plan = plan_fixes(before, only, skip)
    result = FixResult(plan, before)
    if dry_run or not plan.edits:
        result.code = init_code(plan)
        return result
    current = _repaired(model, output, plan.edits, options, inplace, first=True)
    result.after = analyze_with(current, options, example_inputs)
    if plan.deferred:  # the scale findings, planned again on the model as the resets left it
        second = plan_fixes(result.after, only, skip, second=True)
        if second.edits:
            current = _repaired(current, output, second.edits, options, inplace=True, first=False)
            result.after = analyze_with(current, options, example_inputs)
        result.plan = plan = merged(plan, second)
    result.model = current if _is_module(model) else None
    result.code = init_code(plan)
    result.proof = prove(plan, before, result.after)
    return result


def _repaired(model, output, edits, options: Options, inplace: bool, first: bool):
    """The model with the edits: a module (a copy unless `inplace`), or the output file written (from the input
    in the first round; over itself, through a temporary file, in the second)."""
    from initcheck.repair_write import edited_module, rewrite, write_model

    if _is_module(model):
        return edited_module(model, edits, inplace)
    if first:
        write_model(Path(model), Path(output), edits, options.trust_pickle)
    else:
        rewrite(Path(output), edits, options.trust_pickle)
    return Path(output)
