"""The exported-model contract: one TorchScript file with its metadata inside."""
from .exporter import (FORMAT_VERSION, METADATA_FILE, export_model, load_exported, read_metadata,
                       NotASo3kratesModel)
from .loading import is_exported_file, load_model

__all__ = ["FORMAT_VERSION", "METADATA_FILE", "export_model", "load_exported", "read_metadata",
           "NotASo3kratesModel", "is_exported_file", "load_model"]
