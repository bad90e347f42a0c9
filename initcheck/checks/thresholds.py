"""Every check's thresholds in one place: defaults (docs/theory.md §13) and the per-run overrides a config sets.

Checks read `limit(code, name)`; `initcheck rules` lists DEFAULTS; a config's `thresholds` table may set any
of these names (unknown codes or names are configuration errors). Overrides live in a context variable, so
concurrent analyses with different configs do not see each other's values.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

DEFAULTS: dict[str, dict[str, float]] = {
    "IC101": {"warning": 1.0, "error": 2.0},  # decades of K growth from the reference
    "IC102": {"warning": 1.0, "error": 2.0},
    "IC111": {"warning": 1.0, "error": 3.0},  # decades of gradient energy
    "IC112": {"warning": 1.0, "error": 3.0},
    "IC401": {"tolerance": 1.15},  # K_sym / K_meas beyond this factor (plus 3 SE) disagrees
    "IC402": {"error": 1e-3},  # relative L2 difference, torch form vs onnxruntime
    "IC501": {"warning": 1.5, "error": 2.0},  # per-phase K ratio
    "IC502": {"growth": 1.9, "blocks": 4},
    "IC503": {"shrink": 0.9, "blocks": 4},
    "IC504": {"warning": 2.0, "error": 4.0},  # within-row logit std
    "IC505": {"warning": 0.5, "overly_deep": 1.0},  # CV^2 of the last hidden K
    "IC506": {"low": 1e-2, "high": 1e2},  # chi^T over the sequence
    "IC507": {"info": 1.0, "warning": 4.0},  # train/eval K factor
    "IC508": {"growth": 1.9, "branches": 3},
    "IC509": {"gain": 1.25, "imbalance": 4.0},
    "IC510": {"common_share": 0.2},
    "IC511": {"share": 0.5},
    "IC512": {"decades": 1.0, "layers": 3},
    "IC513": {"rho": 0.95, "rise": 0.2},
    "IC514": {"coherence": 0.5},
    "IC515": {"info": 1.5, "warning": 3.0},  # k=3 s=2 (ratio 2) is in every ResNet and Whisper stem: not a defect
    "IC516": {"decades": 1.0},
    "IC517": {"spread": 3.0},
}

_OVERRIDES: ContextVar[dict[str, dict[str, float]] | None] = ContextVar("initcheck_thresholds", default=None)


def limit(code: str, name: str) -> float:
    return (_OVERRIDES.get() or {}).get(code, {}).get(name, DEFAULTS[code][name])


@contextmanager
def overridden(overrides: dict[str, dict[str, float]] | None):
    token = _OVERRIDES.set(overrides or {})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)
