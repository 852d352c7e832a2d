"""Cross-engine validation: step-0 agreement, NVE energy conservation and trajectory divergence
against the ASE engine (the reference MD)."""
from .validate import Tolerances, ValidationSettings, format_report, validate

__all__ = ["Tolerances", "ValidationSettings", "format_report", "validate"]
