from initcheck.api import InitcheckFailed, analyze, check, fix
from initcheck.probes.common import ProbeOptions
from initcheck.report.model import Finding, LayerRow, Report

__version__ = "0.1.0"
__all__ = ["Finding", "InitcheckFailed", "LayerRow", "ProbeOptions", "Report", "__version__", "analyze", "check", "fix"]
