"""`lavt export`: a LAVT as ONNX graphs with exact float32 parity, optionally int8, in a folder
that `lavt.runtime` runs without torch."""
from lavt.export.exporter import ExportReport, export_model, parse_size

__all__ = ["ExportReport", "export_model", "parse_size"]
