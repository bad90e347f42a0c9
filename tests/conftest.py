import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("INITCHECK_DEBUG", "1")  # rule failures raise in tests instead of degrading silently
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")
