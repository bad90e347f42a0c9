"""The options of one analysis, resolved once: the caller's flags (CLI or API) over the config file's values over
the defaults. Nothing downstream merges again or asks where a value came from.

A flag that cannot act is an error, never silently ignored: probe flags beside --no-probe, --device cuda where
torch is missing. Where the probe simply cannot run here (its packages are missing), the options say why, and
the report carries that note.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initcheck.config import Config
from initcheck.errors import UsageError

FAIL_ON = ("info", "warning", "error", "never")


@dataclass(frozen=True)
class ProbeOptions:
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    batch: int = 16  # samples per seed where the model's batch dimension allows it
    seeds: int = 4  # fresh input batches (and, with resample_weights, fresh weight permutations)
    resample_weights: bool = False
    loss: str = "cotangent"  # cotangent: unit-variance random cotangent at every output; cross_entropy: random labels
    input_data: str | None = None  # .npz with arrays named like the inputs
    timeout: float | None = None  # seconds; the probe stops and reports what it measured so far
    dtype: str = "float32"  # float32, or bfloat16/float16: run under autocast, as mixed-precision training does
    layers: int | None = None  # run only the first N blocks of the repeated stack (None: as many as fit)
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)


# the probe's settings a flag or the config's `probe` table may give
PROBE_SETTINGS = ("device", "batch", "seeds", "resample_weights", "loss", "input_data", "timeout", "dtype", "layers")


def probe_flag(setting: str) -> str:
    """The CLI flag (without dashes) that gives a probe setting: --probe-dtype sets dtype."""
    return {"dtype": "probe-dtype", "layers": "probe-layers"}.get(setting, setting.replace("_", "-"))


@dataclass(frozen=True)
class Options:
    """Everything one analysis of one model reads besides the model itself."""

    config: Config = field(default_factory=Config)  # thresholds, severities, ignores, deviations
    shapes: dict[str, tuple] = field(default_factory=dict)  # file models: input shapes (and dtypes) by name
    arch: str | None = None
    trust_pickle: bool = False
    all_nodes: bool = False
    all_layers: bool = False  # one table row per layer even in repeated blocks
    training: bool | None = None  # None: a module's own mode; eval for files
    probe: ProbeOptions | None = None  # None: symbolic pass only
    probe_skipped: str | None = None  # why the probe that was asked for cannot run here
    degree: int | None = None
    fail_on: str = "error"
    max_elements: int | None = None
    time_limit: float | None = None


def resolve(
    config: Config,
    *,
    shapes: dict[str, tuple] | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    all_nodes: bool = False,
    all_layers: bool = False,
    training: bool | None = None,
    probe: bool | ProbeOptions | None = None,
    probe_flags: dict[str, Any] | None = None,
    degree: int | None = None,
    fail_on: str | None = None,
    max_elements: int | None = None,
    time_limit: float | None = None,
    model: str | Path | None = None,
) -> Options:
    """Flags (None = not given) over `config` (already narrowed to the model) over the defaults.

    probe: True/False from the caller, or the API's own ProbeOptions (used as given); None leaves it to the
      config (on unless `probe.enabled = false`).
    probe_flags: the probe settings the caller gave, by PROBE_SETTINGS name (None = not given).
    model: the model file, when there is one (decides which packages the probe needs).
    """
    given = {k: v for k, v in (probe_flags or {}).items() if v is not None and v is not False}
    enabled = probe if probe is not None else config.probe.get("enabled", True)
    if not enabled and given and probe is False:
        flags = ", ".join(f"--{probe_flag(k)}" for k in given)
        raise UsageError(f"{flags}: probe setting(s) given with --no-probe; drop one or the other")
    probe_options, skipped = None, None
    if isinstance(probe, ProbeOptions):
        probe_options, skipped = _probe_here(probe, model, explicit_device=probe.device != "auto")
    elif enabled:
        settings = {k: v for k, v in config.probe.items() if k != "enabled"} | given
        probe_options, skipped = _probe_here(ProbeOptions(**settings), model, explicit_device="device" in given)
    return Options(
        config=config,
        shapes={**config.inputs, **(shapes or {})},
        arch=arch or config.arch,
        trust_pickle=trust_pickle,
        all_nodes=all_nodes,
        all_layers=all_layers,
        training=training if training is not None else config.train,
        probe=probe_options,
        probe_skipped=skipped,
        degree=degree or config.degree,
        fail_on=fail_on or config.fail_on or "error",
        max_elements=max_elements or config.max_elements,
        time_limit=time_limit or config.time_limit,
    )


def _probe_here(
    options: ProbeOptions, model: str | Path | None, explicit_device: bool
) -> tuple[ProbeOptions | None, str | None]:
    """The probe needs torch (and onnxruntime for ONNX files). Missing, it is skipped with a note, unless the caller
    asked for a device: that flag cannot act, so it is an error."""
    is_onnx = model is not None and str(model).lower().endswith(".onnx")
    missing = [m for m in ("torch",) + (("onnxruntime",) if is_onnx else ()) if not _importable(m)]
    if not missing:
        return options, None
    install = "pip install 'initcheck[torch]'"
    if explicit_device:
        raise UsageError(f"--device {options.device}: the probe needs {' and '.join(missing)} ({install})")
    return None, f"probe skipped: {', '.join(missing)} not installed ({install}); symbolic pass only"


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
