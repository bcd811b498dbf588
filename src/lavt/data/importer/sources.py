"""The three source formats of `lavt data import`, read into one list of records.

- JSON Lines: one object per line, `{"image", "expressions", "mask" | "polygons" | "rle",
  "split"?, "category"?}`; paths relative to the JSONL file's folder.
- COCO: an instances.json plus a CSV or JSONL of `annotation_id, expression[, split]`.
- A folder: `images/NAME.<ext>`, `masks/NAME__<k>.png`, `expressions.csv` with
  `mask_file, expression[, split, category]`.

A record is one object with its expressions; what is wrong with a single record (bad JSON,
a missing key, an unknown annotation id) becomes a `BadRecord` with its file and 1-based
line, so the caller can stop or skip it. What is wrong with a whole file raises
`LAVTUserError`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavt.errors import LAVTUserError

FORMATS = ("jsonl", "coco", "folder")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_KEYS = ("mask", "polygons", "rle")


@dataclass
class Record:
    """One object of the source: its image, its mask in one of three forms, its expressions.

    `expressions` holds (line, text) pairs: in a CSV each expression has its own line.
    """

    file: Path
    line: int
    image: Path
    expressions: list[tuple[int, str]]
    mask: Path | None = None  # a PNG mask file
    segmentation: Any = None  # polygons or RLE given in the source
    split: str | None = None
    category: str | None = None

    def __post_init__(self) -> None:
        # one spelling per file ("a.jpg" and "./a.jpg" are one image)
        self.image = Path(os.path.normpath(self.image))


@dataclass
class BadRecord:
    """A record that cannot be imported, and why (the reason says what to fix)."""

    file: Path
    line: int
    reason: str

    def message(self) -> str:
        return f"{self.file} line {self.line}: {self.reason}"


@dataclass
class Source:
    """What a reader found: the records in source order and the ones it could not read."""

    records: list[Record] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)


def detect_format(source: Path) -> str:
    """'folder' for a directory, 'jsonl' for *.jsonl, 'coco' for *.json."""
    if source.is_dir():
        return "folder"
    if source.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    if source.suffix.lower() == ".json":
        return "coco"
    raise LAVTUserError(
        f"cannot tell the format of {source}: pass a .jsonl file, a COCO instances .json (with --expressions) "
        "or a folder with images/, masks/ and expressions.csv, or name it with --format"
    )


def _lines(path: Path) -> list[tuple[int, str | None]]:
    """(1-based line number, text or None when the line is not UTF-8) of a text file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LAVTUserError(f"cannot read {path}: {exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[tuple[int, str | None]] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            out.append((number, raw.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError:
            out.append((number, None))
    return out


def _json_objects(path: Path, bad: list[BadRecord]) -> list[tuple[int, dict]]:
    """The JSON objects of a JSON Lines file with their line numbers; bad lines go to `bad`."""
    objects = []
    for number, text in _lines(path):
        if text is None:
            bad.append(BadRecord(path, number, "is not UTF-8 text; save the file as UTF-8"))
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append(BadRecord(path, number, f"is not valid JSON ({exc.msg} at column {exc.colno}); fix the line"))
            continue
        if not isinstance(obj, dict):
            bad.append(BadRecord(path, number, f"is a JSON {type(obj).__name__}, not an object; one object per line"))
            continue
        objects.append((number, obj))
    return objects


def _csv_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header line, as (line of the row's start, {column: value})."""
    lines = _lines(path)
    broken = [n for n, text in lines if text is None]
    if broken:
        raise LAVTUserError(f"{path} line {broken[0]} is not UTF-8 text; save the file as UTF-8")
    reader = csv.reader(io.StringIO("\n".join(text for _, text in lines)))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise LAVTUserError(
            f"{path} line 1: the header lacks {', '.join(missing)} (found: {', '.join(header) or 'nothing'}); "
            f"the first line must name the columns {', '.join(required)}"
            + (f" and optionally {', '.join(optional)}" if optional else "")
        )
    rows = []
    start = reader.line_num + 1
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append((start, {name: (row[i] if i < len(row) else "") for i, name in enumerate(header)}))
        start = reader.line_num + 1
    return rows


def _table(path: Path, required: tuple[str, ...], optional: tuple[str, ...], bad: list[BadRecord]) -> list[tuple[int, dict]]:
    """Rows of a CSV, or of a JSON Lines file with the same keys."""
    if not path.is_file():
        raise LAVTUserError(f"expressions file {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, obj in _json_objects(path, bad):
            missing = [k for k in required if k not in obj]
            if missing:
                bad.append(BadRecord(path, number, f"lacks {', '.join(missing)}; each line needs {', '.join(required)}"))
            else:
                rows.append((number, obj))
        return rows
    return _csv_rows(path, required, optional)


def _optional_text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def read_jsonl(path: Path) -> Source:
    """Records of a JSON Lines file; image and mask paths are relative to its folder."""
    if not path.is_file():
        raise LAVTUserError(f"source file {path} does not exist")
    source = Source()
    base = path.parent
    for number, obj in _json_objects(path, source.bad):
        def bad(reason: str, number: int = number) -> None:
            source.bad.append(BadRecord(path, number, reason))

        image = obj.get("image")
        if not isinstance(image, str) or not image.strip():
            bad('has no "image" (the image file, relative to the JSONL file\'s folder)')
            continue
        expressions = obj.get("expressions")
        if isinstance(expressions, str):
            expressions = [expressions]
        if not isinstance(expressions, list) or not all(isinstance(e, str) for e in expressions):
            bad('needs "expressions": a list of strings')
            continue
        given = [k for k in MASK_KEYS if obj.get(k) is not None]
        if len(given) != 1:
            bad(f'needs exactly one of "mask" (a PNG file), "polygons" or "rle", found {", ".join(given) or "none"}')
            continue
        record = Record(path, number, base / image, [(number, e) for e in expressions] or [(number, "")],
                        split=_optional_text(obj.get("split")), category=_optional_text(obj.get("category")))
        if given[0] == "mask":
            if not isinstance(obj["mask"], str):
                bad('"mask" must be the path of a PNG mask file')
                continue
            record.mask = base / obj["mask"]
        else:
            record.segmentation = obj[given[0]]
        source.records.append(record)
    return source


def read_coco(instances: Path, expressions: Path | None, image_dir: Path | None) -> Source:
    """Records of a COCO instances file, one per annotation named in the expressions file.

    Images are looked up as `image_dir/file_name` (default: the instances file's folder).
    Annotations without an expression are left out.
    """
    if expressions is None:
        raise LAVTUserError("a COCO source needs --expressions FILE: a CSV or JSONL of annotation_id, expression[, split]")
    try:
        data = json.loads(instances.read_bytes())
    except OSError as exc:
        raise LAVTUserError(f"cannot read COCO instances file {instances}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LAVTUserError(f"COCO instances file {instances} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise LAVTUserError(f"{instances} is not a COCO instances file: it needs 'images' and 'annotations' lists")
    try:
        images = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
        anns = {int(a["id"]): a for a in data["annotations"]}
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    except (KeyError, TypeError, ValueError) as exc:
        raise LAVTUserError(f"{instances}: an image, annotation or category lacks its id, file_name or name ({exc!r})") from exc
    image_dir = instances.parent if image_dir is None else image_dir
    source = Source()
    by_ann: dict[int, Record] = {}
    for number, row in _table(expressions, ("annotation_id", "expression"), ("split",), source.bad):
        try:
            ann_id = int(str(row["annotation_id"]).strip())
        except ValueError:
            source.bad.append(BadRecord(expressions, number, f"annotation_id {row['annotation_id']!r} is not an integer"))
            continue
        ann = anns.get(ann_id)
        if ann is None or "segmentation" not in ann or int(ann.get("image_id", -1)) not in images:
            what = "is not in" if ann is None else "has no segmentation or no image in"
            source.bad.append(BadRecord(expressions, number, f"annotation {ann_id} {what} {instances}; fix the id"))
            continue
        text = row["expression"] if isinstance(row["expression"], str) else ""
        split = _optional_text(row.get("split"))
        record = by_ann.get(ann_id)
        if record is None:
            category = categories.get(int(ann.get("category_id", -1)))
            record = Record(expressions, number, image_dir / images[int(ann["image_id"])], [],
                            segmentation=ann["segmentation"], split=split, category=category)
            by_ann[ann_id] = record
            source.records.append(record)
        elif split != record.split:
            source.bad.append(BadRecord(expressions, number, f"puts annotation {ann_id} in split {split!r}, line "
                                        f"{record.line} in {record.split!r}; one object, one split"))
            continue
        record.expressions.append((number, text))
    return source


def read_folder(folder: Path) -> Source:
    """Records of a labelling-tool export: one per mask file named in expressions.csv."""
    table, image_root, mask_root = folder / "expressions.csv", folder / "images", folder / "masks"
    for path in (image_root, mask_root, table):
        if not path.exists():
            raise LAVTUserError(f"{path} does not exist; a folder source holds images/NAME.jpg, masks/NAME__<k>.png "
                                "and expressions.csv (mask_file, expression)")
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(image_root.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
    source = Source()
    by_mask: dict[str, Record] = {}
    for number, row in _table(table, ("mask_file", "expression"), ("split", "category"), source.bad):
        def bad(reason: str, number: int = number) -> None:
            source.bad.append(BadRecord(table, number, reason))

        name = row["mask_file"].strip().replace("\\", "/")
        name = name[len("masks/"):] if name.startswith("masks/") else name
        split = _optional_text(row.get("split"))
        record = by_mask.get(name)
        if record is not None:
            if split != record.split:
                bad(f"puts mask {name} in split {split!r}, line {record.line} in {record.split!r}; one object, one split")
            else:
                record.expressions.append((number, row["expression"]))
            continue
        stem = os.path.splitext(os.path.basename(name))[0]
        if "__" not in stem:
            bad(f"mask file {name!r} is not named IMAGE__<k>.png, so its image is unknown; rename it")
            continue
        image_stem = stem.rsplit("__", 1)[0]
        candidates = by_stem.get(image_stem, [])
        if len(candidates) > 1:
            bad(f"mask {name} matches several images ({', '.join(p.name for p in candidates)}); keep one")
            continue
        if not candidates:
            bad(f"mask {name} has no image {image_root / image_stem}.* ({', '.join(IMAGE_SUFFIXES)}); add the image "
                "or fix the mask's name")
            continue
        record = Record(table, number, candidates[0], [(number, row["expression"])], mask=mask_root / name,
                        split=split, category=_optional_text(row.get("category")))
        by_mask[name] = record
        source.records.append(record)
    return source


def read_source(source: Path, fmt: str | None = None, *, expressions: Path | None = None,
                image_dir: Path | None = None) -> Source:
    """Read any of the three formats (`fmt` None: detected from `source`)."""
    source = Path(source)
    if not source.exists():
        raise LAVTUserError(f"source {source} does not exist")
    fmt = fmt or detect_format(source)
    if fmt not in FORMATS:
        raise LAVTUserError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "coco" and (expressions is not None or image_dir is not None):
        raise LAVTUserError("--expressions and --images belong to a COCO source; the other formats name their own files")
    if fmt == "jsonl":
        return read_jsonl(source)
    if fmt == "coco":
        return read_coco(source, Path(expressions) if expressions else None, Path(image_dir) if image_dir else None)
    return read_folder(source)
