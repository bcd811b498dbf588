"""`import_dataset`: read a source, check every record, write the refer layout atomically.

Output, readable by `Refer(out_root, name, split_by)` and so by `lavt data info/train/evaluate
--dataset NAME`: `out_root/NAME/refs(<split_by>).p` (protocol-2 pickle), `out_root/NAME/
instances.json` and the images in `out_root/images/NAME/` (the reader's image folder for a
dataset name it does not know). Everything is written under a temporary folder and moved
into place at the end, so a failed import leaves nothing behind. Ids follow the sorted
image paths and the source order, JSON keys are sorted and nothing depends on the clock, so
the same inputs and seed give byte-identical files.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lavt.data.importer.sources import BadRecord, read_source
from lavt.data.importer.validate import check_records, check_splits, parse_fractions, split_images, words
from lavt.data.refer import IMAGE_DIRS, refs_path
from lavt.errors import LAVTUserError

DEFAULT_CATEGORY = "object"
SKIPPED_FILE = "skipped.jsonl"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass
class ImportSummary:
    """What `import_dataset` wrote: paths, counts per split, mask forms, skipped records."""

    refs_file: Path
    instances_file: Path
    image_dir: Path
    splits: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # split -> images, refs, expressions
    polygons: int = 0
    rles: int = 0
    skipped: list[BadRecord] = field(default_factory=list)
    skipped_file: Path | None = None

    def format(self) -> str:
        """Human-readable summary (for the CLI)."""
        lines = [f"wrote {self.refs_file}, {self.instances_file} and images under {self.image_dir}",
                 f"{'split':<10}{'images':>8}{'refs':>8}{'expressions':>13}"]
        for split, (images, refs, expressions) in self.splits.items():
            lines.append(f"{split:<10}{images:>8}{refs:>8}{expressions:>13}")
        lines.append(f"masks stored as polygons: {self.polygons}, as RLE: {self.rles}")
        if self.skipped_file is not None:
            lines.append(f"skipped {len(self.skipped)} bad record(s), listed in {self.skipped_file}")
        return "\n".join(lines)


def _check_name(text: str, what: str) -> None:
    if not _NAME.fullmatch(text) or text == "images":
        raise LAVTUserError(f"{what} {text!r} must be a plain folder name (letters, digits, _ . + -) other than 'images'")


def _file_names(images: list[Path]) -> list[str]:
    """Output file names: the source names when they are distinct, else numbered by image id."""
    names = [p.name for p in images]
    if len(set(names)) == len(names):
        return names
    return [f"{p.stem}_{i + 1:06d}{p.suffix}" for i, p in enumerate(images)]


def _report(bad: list[BadRecord], skip_bad: bool) -> None:
    if bad and not skip_bad:
        more = f" ({len(bad) - 1} more bad record(s) after it)" if len(bad) > 1 else ""
        raise LAVTUserError(f"{bad[0].message()}{more}; nothing was written: fix the record, or pass --skip-bad to "
                            "import the others and list the skipped ones")


def import_dataset(
    source: str | Path,
    out_root: str | Path,
    name: str,
    *,
    fmt: str | None = None,
    expressions: str | Path | None = None,
    image_dir: str | Path | None = None,
    split_by: str = "unc",
    splits: str = "0.8,0.1,0.1",
    seed: int = 0,
    link_images: bool = False,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> ImportSummary:
    """Import `source` (JSON Lines, COCO + expressions, or a mask folder) as dataset `name`.

    Splits come from the records when they give them (all or none), otherwise images are
    split by `splits` ('0.8,0.1,0.1' = train, val, test, or 'train=0.9,val=0.1') with `seed`;
    one image is never in two splits. A bad record raises `LAVTUserError` naming its file and
    line, and nothing is written; with `skip_bad` the others are imported and the skipped ones
    listed in `out_root/NAME/skipped.jsonl` (with a warning). `link_images` symlinks the
    images instead of copying them.
    """
    _check_name(name, "--name")
    _check_name(split_by, "--split-by")
    if name in IMAGE_DIRS:
        raise LAVTUserError(f"--name {name!r} is a known dataset with its own image folder; choose another name")
    fractions = parse_fractions(splits)
    root = Path(out_root)
    data_dir, images_out = root / name, root / "images" / name
    for path in (data_dir, images_out):
        if path.exists() and not overwrite:
            raise LAVTUserError(f"{path} already exists; choose another --name or --out, or pass --overwrite")

    found = read_source(Path(source), fmt, expressions=expressions, image_dir=image_dir)
    objects, bad = check_records(found.records)
    objects, split_bad = check_splits(objects)
    bad = sorted(found.bad + bad + split_bad, key=lambda b: (str(b.file), b.line))
    _report(bad, skip_bad)
    if not objects:
        raise LAVTUserError(f"no record of {source} could be imported ({len(bad)} bad); nothing was written")

    image_paths = sorted({o.record.image for o in objects}, key=str)
    if any(o.split is None for o in objects):
        image_split = split_images([str(p) for p in image_paths], fractions, seed)
        for obj in objects:
            obj.split = image_split[str(obj.record.image)]
    image_ids = {path: i + 1 for i, path in enumerate(image_paths)}
    file_names = dict(zip(image_paths, _file_names(image_paths)))
    ordered = sorted(enumerate(objects), key=lambda item: (image_ids[item[1].record.image], item[0]))
    objects = [obj for _, obj in ordered]
    category_ids = {c: i + 1 for i, c in enumerate(sorted({o.record.category or DEFAULT_CATEGORY for o in objects}))}

    summary = ImportSummary(refs_file=refs_path(root, name, split_by), instances_file=data_dir / "instances.json",
                            image_dir=images_out, skipped=bad)
    images, annotations, refs = [], [], []
    first = {}
    for obj in objects:
        first.setdefault(obj.record.image, obj)
    for path in image_paths:
        size = first[path]
        images.append({"id": image_ids[path], "file_name": file_names[path], "height": size.height, "width": size.width})
    sent_id = 0
    for ann_id, obj in enumerate(objects, 1):
        image_id = image_ids[obj.record.image]
        category_id = category_ids[obj.record.category or DEFAULT_CATEGORY]
        if isinstance(obj.segmentation, dict):
            summary.rles += 1
        else:
            summary.polygons += 1
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
                            "segmentation": obj.segmentation, "area": obj.area, "bbox": obj.bbox})
        sentences = []
        for raw in obj.expressions:
            sent_id += 1
            tokens = words(raw)
            sentences.append({"raw": raw, "sent": " ".join(tokens), "tokens": tokens, "sent_id": sent_id})
        refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "category_id": category_id,
                     "split": obj.split, "file_name": file_names[obj.record.image], "sentences": sentences,
                     "sent_ids": [s["sent_id"] for s in sentences]})
    known = [*fractions, "train", "val", "test", "testA", "testB"]
    for split in sorted({o.split for o in objects}, key=lambda s: (known.index(s) if s in known else len(known), s)):
        of_split = [o for o in objects if o.split == split]
        summary.splits[split] = (len({o.record.image for o in of_split}), len(of_split),
                                 sum(len(o.expressions) for o in of_split))
    instances = {
        "info": {"description": f"{name}: imported with lavt data import", "split_by": split_by,
                 "splits": "from the records" if all(o.record.split for o in objects) else
                 {"fractions": fractions, "seed": int(seed), "by": "image"}},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": c, "supercategory": c} for c, i in category_ids.items()],
    }
    _write(root, name, split_by, instances, refs, file_names, link_images, bad if skip_bad else [], overwrite)
    if bad:
        summary.skipped_file = data_dir / SKIPPED_FILE
        warnings.warn(f"skipped {len(bad)} bad record(s) of {source}, listed in {summary.skipped_file}; "
                      f"the first: {bad[0].message()}", stacklevel=2)
    return summary


def _write(root: Path, name: str, split_by: str, instances: dict, refs: list, file_names: dict[Path, str],
           link_images: bool, skipped: list[BadRecord], overwrite: bool) -> None:
    """Write into `root/.NAME.import/` and move the two folders into place at the end."""
    tmp = root / f".{name}.import"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "data").mkdir(parents=True)
        (tmp / "images").mkdir()
        for source, file_name in file_names.items():
            target = tmp / "images" / file_name
            if link_images:
                os.symlink(os.path.abspath(source), target)
            else:
                shutil.copyfile(source, target)
        (tmp / "data" / "instances.json").write_text(json.dumps(instances, sort_keys=True, separators=(",", ":")))
        (tmp / "data" / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
        if skipped:
            lines = [json.dumps({"file": str(b.file), "line": b.line, "reason": b.reason}, sort_keys=True) for b in skipped]
            (tmp / "data" / SKIPPED_FILE).write_text("\n".join(lines) + "\n")
        (root / "images").mkdir(exist_ok=True)
        for built, final in ((tmp / "data", root / name), (tmp / "images", root / "images" / name)):
            if final.exists() and overwrite:
                shutil.rmtree(final)
            os.replace(built, final)
        tmp.rmdir()
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LAVTUserError(f"cannot write the dataset under {root}: {exc}") from exc
