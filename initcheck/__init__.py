from initcheck.api import analyze
from initcheck.report.model import Finding, LayerRow, Report

__version__ = "0.1.0"
__all__ = ["Finding", "LayerRow", "Report", "__version__", "analyze"]
