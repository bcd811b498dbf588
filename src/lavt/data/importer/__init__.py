"""`lavt data import`: a user's own referring data (JSON Lines, COCO + expressions, or a
folder of PNG masks) written in the refer layout that every other command reads.

`sources` reads the three formats into records, `validate` checks each record and makes the
splits, `masks` turns PNG masks into exact polygons or RLE, `writer` writes the files.
"""
from __future__ import annotations

from lavt.data.importer.sources import FORMATS, BadRecord, Record
from lavt.data.importer.writer import ImportSummary, import_dataset

__all__ = ["FORMATS", "BadRecord", "ImportSummary", "Record", "import_dataset"]
