"""Project configuration: `[tool.initcheck]` in pyproject.toml or `.initcheck.yaml`, found by walking up from
the model file (as ruff and pytest do); command-line flags override it.

Keys (the same in both files; YAML has them at top level):
  fail_on      info | warning | error | never
  train        analyse batch norm and dropout as in training
  thresholds   {CODE: {name: number}}   names as `initcheck rules` lists them
  severity     {CODE: info | warning | error | off}
  ignore       [CODE | {code: CODE, layer: GLOB}]   drop findings (layer globs match scope or node name)
  deviations   [{layer: GLOB, code: CODE, reason: TEXT}]   intentional: reported as info with the reason
  probe        {enabled, device, batch, seeds, resample_weights, loss, timeout, dtype, layers}
  limits       {max_elements, time_limit}   refuse tensors larger than max_elements; stop a model after
               time_limit seconds (defaults: 2^31 elements, no time limit)
  models       {GLOB: {inputs: {NAME: "1x3x224x224[:dtype]"}, degree, arch, train, fail_on, ignore, deviations}}
               GLOB matches the model path relative to the config file's folder (or its file name)
Unknown keys and bad values are errors that name the key and the file.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from initcheck.errors import UsageError

SEVERITY_CHOICES = ("info", "warning", "error")
FAIL_ON_CHOICES = ("info", "warning", "error", "never")
PROBE_KEYS = {
    "enabled": bool,
    "device": str,
    "batch": int,
    "seeds": int,
    "resample_weights": bool,
    "loss": str,
    "timeout": (int, float),
    "dtype": str,
    "layers": int,
}
PROBE_DTYPES = ("float32", "bfloat16", "float16")
LIMIT_KEYS = {"max_elements": int, "time_limit": (int, float)}
MODEL_KEYS = ("inputs", "degree", "arch", "train", "fail_on", "ignore", "deviations")
TOP_KEYS = ("fail_on", "train", "thresholds", "severity", "ignore", "deviations", "probe", "limits", "models")
FILE_NAMES = (".initcheck.yaml", ".initcheck.yml", "pyproject.toml")


class ConfigError(UsageError):
    """A configuration file that cannot be used: exit code 2, one line naming the file and the key."""


@dataclass(frozen=True)
class Rule:
    """A pattern over findings: a code and/or a layer glob (empty = any)."""

    code: str = ""
    layer: str = ""
    reason: str = ""

    def matches(self, finding) -> bool:
        if self.code and finding.code != self.code:
            return False
        if self.layer and not any(
            fnmatch.fnmatchcase(name, self.layer) for name in (finding.scope, finding.node) if name
        ):
            return False
        return True


@dataclass(frozen=True)
class Config:
    source: str = ""  # the file it came from ("" = defaults)
    fail_on: str | None = None
    train: bool | None = None
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    severity: dict[str, str] = field(default_factory=dict)
    ignore: tuple[Rule, ...] = ()
    deviations: tuple[Rule, ...] = ()
    probe: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, tuple] = field(default_factory=dict)  # per model, after `models` matching
    degree: int | None = None
    arch: str | None = None
    models: dict[str, dict] = field(default_factory=dict)
    max_elements: int | None = None
    time_limit: float | None = None

    def for_model(self, model: Path) -> Config:
        """This config with the `models` entries that match `model` merged in (later entries win)."""
        merged = self
        base = Path(self.source).parent if self.source else Path.cwd()
        try:
            relative = Path(model).resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            relative = Path(model).as_posix()
        for pattern, entry in self.models.items():
            if fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(Path(model).name, pattern):
                merged = replace(
                    merged,
                    inputs={**merged.inputs, **entry.get("inputs", {})},
                    degree=entry.get("degree", merged.degree),
                    arch=entry.get("arch", merged.arch),
                    train=entry.get("train", merged.train),
                    fail_on=entry.get("fail_on", merged.fail_on),
                    ignore=merged.ignore + entry.get("ignore", ()),
                    deviations=merged.deviations + entry.get("deviations", ()),
                )
        return replace(merged, models={})  # merged once: applying it again changes nothing


def discover(model: Path) -> Path | None:
    """The nearest config file in the model's folder or above it."""
    folder = Path(model).resolve().parent
    for directory in (folder, *folder.parents):
        for name in FILE_NAMES:
            candidate = directory / name
            if candidate.is_file() and (name != "pyproject.toml" or _has_tool_section(candidate)):
                return candidate
    return None


def load(path: Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    data = _parse(path, text)
    return _build(data, str(path))


def _has_tool_section(path: Path) -> bool:
    """A pyproject.toml counts only with a [tool.initcheck] table; a broken one that mentions it is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    try:
        return "initcheck" in _parse(path, text, section_only=False).get("tool", {})
    except ConfigError:
        if "tool.initcheck" in text:
            raise
        return False


def _parse(path: Path, text: str, section_only: bool = True) -> dict:
    if path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        return data.get("tool", {}).get("initcheck", {}) if section_only else data
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading YAML configs needs PyYAML (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _build(data: dict, source: str) -> Config:
    check = _Checker(source)
    check.known(data, TOP_KEYS, "")
    models = check.mapping(data.get("models", {}), "models")
    parsed_models = {}
    for pattern, entry in models.items():
        key = f"models.{pattern}"
        check.known(check.mapping(entry, key), MODEL_KEYS, key)
        parsed_models[pattern] = {k: v for k, v in check.model_entry(entry, key).items() if v is not None}
    return Config(
        source=source,
        fail_on=check.choice(data.get("fail_on"), FAIL_ON_CHOICES, "fail_on"),
        train=check.typed(data.get("train"), bool, "train"),
        thresholds=check.thresholds(data.get("thresholds", {})),
        severity=check.severities(data.get("severity", {})),
        ignore=check.rules(data.get("ignore", []), "ignore", need_reason=False),
        deviations=check.rules(data.get("deviations", []), "deviations", need_reason=True),
        probe=check.probe(data.get("probe", {})),
        models=parsed_models,
        **check.limits(data.get("limits", {})),
    )


class _Checker:
    """Validation with messages of the form '<file>: <key>: <problem>'."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str):
        raise ConfigError(f"{self.source}: {key}: {problem}" if key else f"{self.source}: {problem}")

    def known(self, data: dict, allowed, prefix: str) -> None:
        for key in data:
            if key not in allowed:
                self.fail(f"{prefix}.{key}" if prefix else str(key), f"unknown key (known: {', '.join(allowed)})")

    def mapping(self, value, key: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"expected a table/mapping, got {type(value).__name__}")
        return value

    def typed(self, value, kind, key: str):
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            self.fail(key, f"expected {names}, got {value!r}")
        return value

    def choice(self, value, choices, key: str):
        if value is not None and value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def code(self, value, key: str) -> str:
        from initcheck.codes import CODES

        if value not in CODES:
            self.fail(key, f"unknown finding code {value!r} (see `initcheck rules`)")
        return value

    def thresholds(self, data) -> dict[str, dict[str, float]]:
        from initcheck.codes import DEFAULTS

        out: dict[str, dict[str, float]] = {}
        for code, names in self.mapping(data, "thresholds").items():
            self.code(code, f"thresholds.{code}")
            if code not in DEFAULTS:
                self.fail(f"thresholds.{code}", "this code has no thresholds")
            for name, value in self.mapping(names, f"thresholds.{code}").items():
                key = f"thresholds.{code}.{name}"
                if name not in DEFAULTS[code]:
                    self.fail(key, f"unknown threshold (known: {', '.join(DEFAULTS[code])})")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value or value < 0:
                    self.fail(key, f"expected a non-negative number, got {value!r}")
                out.setdefault(code, {})[name] = float(value)
        return out

    def severities(self, data) -> dict[str, str]:
        out = {}
        for code, level in self.mapping(data, "severity").items():
            self.code(code, f"severity.{code}")
            out[code] = self.choice(level, (*SEVERITY_CHOICES, "off"), f"severity.{code}")
        return out

    def rules(self, data, key: str, need_reason: bool) -> tuple[Rule, ...]:
        if not isinstance(data, list):
            self.fail(key, f"expected a list, got {type(data).__name__}")
        rules = []
        for i, item in enumerate(data):
            where = f"{key}[{i}]"
            if isinstance(item, str) and not need_reason:
                rules.append(Rule(code=self.code(item, where)))
                continue
            entry = self.mapping(item, where)
            self.known(entry, ("code", "layer", "reason"), where)
            code = self.code(entry["code"], f"{where}.code") if "code" in entry else ""
            layer = self.typed(entry.get("layer"), str, f"{where}.layer") or ""
            reason = self.typed(entry.get("reason"), str, f"{where}.reason") or ""
            if not code and not layer:
                self.fail(where, "give a code, a layer glob, or both")
            if need_reason and not reason:
                self.fail(where, "a deviation needs a reason (it is shown in the report)")
            rules.append(Rule(code, layer, reason))
        return tuple(rules)

    def probe(self, data) -> dict:
        data = self.mapping(data, "probe")
        self.known(data, tuple(PROBE_KEYS), "probe")
        out = {key: self.typed(value, PROBE_KEYS[key], f"probe.{key}") for key, value in data.items()}
        self.choice(out.get("loss"), ("cotangent", "cross_entropy"), "probe.loss")
        self.choice(out.get("dtype"), PROBE_DTYPES, "probe.dtype")
        for key in ("batch", "seeds", "layers"):
            if key in out and out[key] <= 0:
                self.fail(f"probe.{key}", "must be positive")
        return out

    def limits(self, data) -> dict:
        data = self.mapping(data, "limits")
        self.known(data, tuple(LIMIT_KEYS), "limits")
        out = {key: self.typed(value, LIMIT_KEYS[key], f"limits.{key}") for key, value in data.items()}
        for key, value in out.items():
            if value is not None and value <= 0:
                self.fail(f"limits.{key}", "must be positive")
        return out

    def model_entry(self, entry: dict, key: str) -> dict:
        inputs = {}
        for name, text in self.mapping(entry.get("inputs", {}), f"{key}.inputs").items():
            self.typed(text, str, f"{key}.inputs.{name}")
            try:
                parsed_name, spec = parse_shape(f"{name}={text}")
            except UsageError as e:
                self.fail(f"{key}.inputs.{name}", str(e))
            inputs[parsed_name] = spec
        degree = self.typed(entry.get("degree"), int, f"{key}.degree")
        if degree is not None and degree <= 0:
            self.fail(f"{key}.degree", "must be positive")
        return {
            "inputs": inputs or None,
            "degree": degree,
            "arch": self.typed(entry.get("arch"), str, f"{key}.arch"),
            "train": self.typed(entry.get("train"), bool, f"{key}.train"),
            "fail_on": self.choice(entry.get("fail_on"), FAIL_ON_CHOICES, f"{key}.fail_on"),
            "ignore": self.rules(entry.get("ignore", []), f"{key}.ignore", need_reason=False) or None,
            "deviations": self.rules(entry.get("deviations", []), f"{key}.deviations", need_reason=True) or None,
        }


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
