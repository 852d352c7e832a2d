"""Cross-engine validation and the reference Python MD."""
from .validate import EngineSpec, Tolerances, ValidationSettings, format_report, validate

__all__ = ["EngineSpec", "Tolerances", "ValidationSettings", "format_report", "validate"]
