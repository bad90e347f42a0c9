"""Issue 6 §5: the GitHub Action, the pre-commit hook and examples/ci, run the way CI and pre-commit run them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ci"
BIN = Path(sys.executable).parent  # the venv's initcheck


def vendored_schema(name: str) -> dict:
    """GitHub's action and workflow schemas as check-jsonschema ships them (SchemaStore)."""
    return json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(name).read_text())


@pytest.fixture
def example(tmp_path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(EXAMPLE, copy)
    return copy


def action() -> dict:
    return yaml.safe_load((ROOT / "action.yml").read_text())


def test_action_is_a_valid_composite_action():
    spec = action()
    jsonschema.validate(spec, vendored_schema("github-actions.json"))
    assert spec["runs"]["using"] == "composite"
    for step in spec["runs"]["steps"]:
        if "run" in step:  # inputs reach scripts only through env: no ${{ }} pasted into the shell
            assert "${{" not in step["run"] and step["shell"] == "bash"


def run_action_step(repo: Path, **inputs) -> tuple[int, str, str]:
    """The 'Analyse' step's script exactly as the runner would execute it (env from the step's env map)."""
    step = next(s for s in action()["runs"]["steps"] if s.get("id") == "analyze")
    defaults = {k: v.get("default", "") for k, v in action()["inputs"].items()}
    values = {**defaults, **inputs}
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        GITHUB_OUTPUT=str(repo / "gh_output"),
        GITHUB_STEP_SUMMARY=str(repo / "gh_summary"),
    )
    env.pop("INITCHECK_DEBUG", None)
    for name, expr in step["env"].items():
        key = re.fullmatch(r"\$\{\{ inputs\.([\w-]+) \}\}", expr).group(1)
        env[name] = values[key]
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    output = (repo / "gh_output").read_text() if (repo / "gh_output").exists() else ""
    return result.returncode, output, result.stderr


def test_action_passes_the_example_with_its_baseline_and_writes_sarif_and_summary(example):
    code, output, err = run_action_step(example, models="models/*.onnx", baseline="initcheck-baseline.json")
    assert code == 0, err
    assert "exit-code=0" in output
    assert "## initcheck: 3 of 3 model(s) pass" in (example / "gh_summary").read_text()  # the baseline accepts the LSTM
    sarif = json.loads((example / "initcheck.sarif").read_text())
    assert {r["baselineState"] for r in sarif["runs"][0]["results"]} == {"unchanged"}


def test_action_writes_the_html_report_and_a_plot_per_model_for_upload(example):
    pytest.importorskip("matplotlib")
    code, _, err = run_action_step(example, models="models/*.onnx", baseline="initcheck-baseline.json")
    assert code == 0, err
    gathered = sorted(p.name for p in (example / "initcheck-artifacts").iterdir())
    assert gathered == [
        "initcheck-plot-encoder.png",
        "initcheck-plot-legacy_lstm.png",
        "initcheck-plot-upsampler.png",
        "initcheck-report.html",
    ]
    assert (example / "initcheck-artifacts" / "initcheck-report.html").read_text().count("<section") == 3
    assert "in this run's artifacts" in (example / "gh_summary").read_text()


def test_action_fails_without_the_baseline(example):
    code, output, _ = run_action_step(example, models="models/*.onnx")
    assert code == 1 and "exit-code=1" in output  # the legacy LSTM's warnings at fail_on = warning


def test_action_reports_a_broken_model_with_exit_2(example):
    (example / "models" / "broken.onnx").write_bytes(b"\x00\x01 not onnx")
    code, output, err = run_action_step(example, models="models/*.onnx", baseline="initcheck-baseline.json")
    assert code == 2 and "exit-code=2" in output and "broken.onnx" in err


def test_example_workflow_is_valid_and_uses_the_actions_inputs():
    workflow = yaml.safe_load((EXAMPLE / ".github" / "workflows" / "initcheck.yml").read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as a boolean; GitHub reads a string
    jsonschema.validate(workflow, vendored_schema("github-workflows.json"))
    step = next(s for s in workflow["jobs"]["initcheck"]["steps"] if s.get("id") == "initcheck")
    assert set(step["with"]) <= set(action()["inputs"])


def test_pre_commit_hook_runs_as_pre_commit_would(example):
    hook = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())[0]
    config = yaml.safe_load((example / ".pre-commit-config.yaml").read_text())
    used = config["repos"][0]["hooks"][0]
    assert used["id"] == hook["id"]
    staged = ["models/encoder.onnx", "models/legacy_lstm.onnx", "models/upsampler.onnx", "README.md"]
    files = [f for f in staged if re.search(hook["files"], f)]
    assert files == staged[:3]
    command = shlex.split(hook["entry"]) + used.get("args", []) + files
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(command, cwd=example, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    without_baseline = shlex.split(hook["entry"]) + files
    assert subprocess.run(without_baseline, cwd=example, env=env, capture_output=True, timeout=300).returncode == 1


def test_example_baseline_is_current(example):
    """The committed baseline matches what initcheck reports today (regenerate with --write-baseline)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(
        [
            "initcheck",
            "analyze",
            "models/encoder.onnx",
            "models/legacy_lstm.onnx",
            "models/upsampler.onnx",
            "--write-baseline",
            "fresh.json",
        ],
        cwd=example,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert json.loads((example / "fresh.json").read_text()) == json.loads(
        (EXAMPLE / "initcheck-baseline.json").read_text()
    )
