"""The exported-model contract: one TorchScript file with its metadata inside."""
from .exporter import (FORMAT_VERSION, METADATA_FILE, export_model, load_exported, read_metadata,
                       NotASo3kratesModel)

__all__ = ["FORMAT_VERSION", "METADATA_FILE", "export_model", "load_exported", "read_metadata",
           "NotASo3kratesModel"]
