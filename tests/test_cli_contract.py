"""The command line's contract: every flag parses to the same options, every usage error is one line and exit 2.
Written against the argparse CLI before the move to typer, and kept: the move must not change a flag."""

from __future__ import annotations

import pytest

from initcheck.cli import main

DEFAULTS = {
    "models": ["m.onnx"],
    "input": [],
    "arch": None,
    "trust_pickle": False,
    "format": None,
    "output": [],
    "fail_on": None,
    "config": None,
    "no_config": False,
    "baseline": None,
    "write_baseline": None,
    "all_nodes": False,
    "all_layers": False,
    "train": None,
    "degree": None,
    "no_probe": False,
    "device": None,
    "batch": None,
    "seeds": None,
    "resample_weights": False,
    "input_data": None,
    "loss": None,
    "timeout": None,
    "max_elements": None,
    "time_limit": None,
    "debug": False,
}

FLAGS = [
    ([], {}),
    (["--input", "x=1x3", "--input", "y=2:int64"], {"input": ["x=1x3", "y=2:int64"]}),
    (["--arch", "pkg.mod:make"], {"arch": "pkg.mod:make"}),
    (["--trust-pickle"], {"trust_pickle": True}),
    *[(["--format", f], {"format": f}) for f in ("table", "json", "markdown", "sarif", "junit")],
    (["--output", "a.json", "--output", "b.md"], {"output": ["a.json", "b.md"]}),
    *[(["--fail-on", f], {"fail_on": f}) for f in ("info", "warning", "error", "never")],
    (["--config", "c.yaml", "--no-config"], {"config": "c.yaml", "no_config": True}),
    (["--baseline", "b.json", "--write-baseline", "w.json"], {"baseline": "b.json", "write_baseline": "w.json"}),
    (["--all-nodes", "--train", "--degree", "32"], {"all_nodes": True, "train": True, "degree": 32}),
    (["--all-layers"], {"all_layers": True}),
    (["--no-probe"], {"no_probe": True}),
    (["--device", "cuda:1", "--batch", "8", "--seeds", "3"], {"device": "cuda:1", "batch": 8, "seeds": 3}),
    (["--resample-weights", "--input-data", "d.npz"], {"resample_weights": True, "input_data": "d.npz"}),
    (["--loss", "cross_entropy", "--timeout", "2.5"], {"loss": "cross_entropy", "timeout": 2.5}),
    (["--max-elements", "1000", "--time-limit", "1.5"], {"max_elements": 1000, "time_limit": 1.5}),
    (["--debug"], {"debug": True}),
]


@pytest.mark.parametrize("flags,expected", FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_analyze_flag_parses_to_the_same_options(flags, expected, monkeypatch):
    seen = {}

    def capture(args):
        seen.update({name: getattr(args, name) for name in DEFAULTS})
        return 0

    monkeypatch.setattr("initcheck.cli_analyze.run_analyze", capture)
    assert main(["analyze", "m.onnx", *flags]) == 0
    assert seen == {**DEFAULTS, **expected}


def test_several_models_in_order(monkeypatch):
    seen = []
    monkeypatch.setattr("initcheck.cli_analyze.run_analyze", lambda args: seen.append(args.models) or 0)
    assert main(["analyze", "a.onnx", "b.pt2", "--no-probe", "c.onnx"]) == 0
    assert seen == [["a.onnx", "b.pt2", "c.onnx"]]


USAGE_ERRORS = [
    ["analyze"],
    ["analyze", "m.onnx", "--fail-on", "sometimes"],
    ["analyze", "m.onnx", "--format", "xml"],
    ["analyze", "m.onnx", "--seeds", "0"],
    ["analyze", "m.onnx", "--batch", "-1"],
    ["analyze", "m.onnx", "--degree", "many"],
    ["analyze", "m.onnx", "--time-limit", "0"],
    ["analyze", "m.onnx", "--time-limit", "inf"],
    ["analyze", "m.onnx", "--loss", "mse"],
    ["analyze", "m.onnx", "--no-such-flag"],
    ["explain"],
    ["frobnicate"],
    [],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=" ".join)
def test_usage_errors_are_one_line_and_exit_2(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("initcheck: error: "), err
    assert out == "" or argv == []  # no arguments at all: the usage too, on stdout


def test_no_arguments_prints_the_usage(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "analyze" in out and "explain" in out and "rules" in out


def test_version_and_help_exit_0(capsys):
    from initcheck import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"initcheck {__version__}"
    assert main(["analyze", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--fail-on", "--no-probe", "--max-elements", "--resample-weights"))


def _analyze(args, capsys, monkeypatch, env=None):
    from conftest import SAMPLES

    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    code = main(["analyze", str(SAMPLES / "relu_mlp_he.onnx"), "--no-probe", *args])
    return code, *capsys.readouterr()


def test_quiet_prints_one_summary_line_per_model(capsys, monkeypatch):
    code, out, err = _analyze(["--quiet"], capsys, monkeypatch)
    assert code == 0 and err == "" and len(out.strip().splitlines()) == 1
    assert out.strip().endswith("relu_mlp_he.onnx: 0 error, 1 warning, 0 info -> pass (--fail-on error)")
    code, out, err = _analyze(["-q", "--format", "json"], capsys, monkeypatch)
    assert code == 2 and out == "" and "--quiet" in err and len(err.strip().splitlines()) == 1


ESC = "\x1b["


@pytest.mark.parametrize(
    "args,env,coloured",
    [
        ([], {}, False),  # piped: plain text, as before
        (["--color", "always"], {}, True),
        ([], {"FORCE_COLOR": "1"}, True),
        (["--color", "never"], {"FORCE_COLOR": "1"}, False),  # the flag wins over the environment
        (["--color", "always"], {"NO_COLOR": "1"}, True),
        ([], {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
    ],
)
def test_colour_follows_the_flag_then_no_color_and_force_color(args, env, coloured, capsys, monkeypatch):
    code, out, _ = _analyze(args, capsys, monkeypatch, env)
    assert code == 0 and "linear+relu" in out and (ESC in out) == coloured
