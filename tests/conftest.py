import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("INITCHECK_DEBUG", "1")  # rule failures raise in tests instead of degrading silently
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def load_benchmark(name: str):
    """A benchmark script (benchmarks/NAME.py) as a module: the benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")
