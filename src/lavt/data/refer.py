"""Reader of referring datasets in the refer-API layout (RefCOCO, RefCOCO+, G-Ref, synthref).

Layout (the one every RIS code base uses)::

    <root>/<dataset>/refs(<split_by>).p   pickled list of refs
    <root>/<dataset>/instances.json       COCO-style images, annotations, categories
    <root>/images/mscoco/images/train2014/ the COCO images (RefCOCO family)
    <root>/images/synthref/                the generated images (lavt.data.synthref)
    <root>/images/<dataset>/               any other dataset (where `lavt data import` writes)

A ref is a dict with ref_id, ann_id, image_id, category_id, split, sent_ids and
sentences = [{raw, sent, tokens, sent_id}, ...]. This module is our own reader: it
indexes those files, validates the links between them (so a broken record is reported
by file and id when the data is opened, not as a KeyError deep inside training), and
decodes masks with pycocotools from polygons or RLE.
"""
from __future__ import annotations

import json
import pickle
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from lavt.errors import LAVTUserError

# pycocotools 2.0.x trips a numpy 2 DeprecationWarning inside every decode; it is harmless.
warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning, module=r"pycocotools")

MASK_MODES = ("any", "official")

# Image folder of each known dataset, relative to the data root.
IMAGE_DIRS = {
    "refcoco": "images/mscoco/images/train2014",
    "refcoco+": "images/mscoco/images/train2014",
    "refcocog": "images/mscoco/images/train2014",
    "refclef": "images/saiapr_tc-12",
    "synthref": "images/synthref",
}

_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
_SENTENCE_KEYS = ("raw", "sent_id")


def refs_path(root: str | Path, dataset: str, split_by: str) -> Path:
    """Path of the refs pickle: `<root>/<dataset>/refs(<split_by>).p`."""
    return Path(root) / dataset / f"refs({split_by}).p"


def default_image_dir(root: str | Path, dataset: str) -> Path:
    """Image folder for `dataset` under `root` (COCO train2014 for the RefCOCO family).

    Unknown dataset names fall back to `<root>/images/<dataset>`.
    """
    return Path(root) / IMAGE_DIRS.get(dataset, f"images/{dataset}")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler for refs files: plain containers only, so a refs file cannot run code.

    The refs files of RefCOCO/RefCOCO+/G-Ref (Python 2 pickles) hold only dicts, lists,
    strings and numbers; anything that asks to import a class is refused.
    """

    _ALLOWED = {
        ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
        ("__builtin__", "frozenset"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: a refs file holds plain data only")


def _load_pickle(path: Path) -> Any:
    errors = []
    for encoding in ("ASCII", "latin1"):  # latin1 decodes Python 2 byte strings of any content
        try:
            with open(path, "rb") as handle:
                return _DataOnlyUnpickler(handle, encoding=encoding).load()
        except UnicodeDecodeError as exc:
            errors.append(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - any failure means a damaged file
            raise LAVTUserError(
                f"cannot read refs file {path}: {type(exc).__name__}: {exc}; "
                "the file is damaged or not a refs pickle (re-download or regenerate it)"
            ) from exc
    raise LAVTUserError(f"cannot decode the strings in refs file {path}: {errors[-1]}")


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LAVTUserError(
            f"cannot read annotation file {path}: not valid JSON ({exc}); re-download or regenerate it"
        ) from exc


def decode_segmentation(segmentation: Any, height: int, width: int, mode: str = "any") -> np.ndarray:
    """COCO `segmentation` (polygons, or RLE compressed/uncompressed) -> uint8 (H, W) mask in {0, 1}.

    The object is the union of its parts. mode='any' keeps every pixel covered by at least
    one part (`> 0`); mode='official' keeps only pixels covered exactly once (`== 1`), which
    is what the official LAVT code does (it drops pixels where two polygons overlap).
    """
    if mode not in MASK_MODES:
        raise LAVTUserError(f"mask_mode must be one of {MASK_MODES}, got {mode!r}")
    if isinstance(segmentation, dict):
        rles = [segmentation]
    elif isinstance(segmentation, (list, tuple)) and segmentation and all(isinstance(s, dict) for s in segmentation):
        rles = list(segmentation)
    elif isinstance(segmentation, (list, tuple)) and segmentation:
        polygons = [list(map(float, p)) for p in segmentation]
        bad = [i for i, p in enumerate(polygons) if len(p) < 6 or len(p) % 2]
        if bad:
            raise ValueError(f"polygon {bad[0]} has {len(polygons[bad[0]])} coordinates (need an even number >= 6)")
        rles = mask_utils.frPyObjects(polygons, height, width)
    else:
        raise ValueError("segmentation is empty or neither polygons nor RLE")
    decoded = []
    for rle in rles:
        if "size" not in rle or "counts" not in rle:
            raise ValueError("an RLE needs 'size' and 'counts'")
        if isinstance(rle["counts"], list):  # uncompressed RLE: runs over the column-major pixels
            if sum(rle["counts"]) != rle["size"][0] * rle["size"][1]:
                raise ValueError(f"RLE runs cover {sum(rle['counts'])} pixels, not {rle['size'][0]}x{rle['size'][1]}")
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        if tuple(rle["size"]) != (height, width):
            raise ValueError(f"RLE size {list(rle['size'])} differs from the image size {[height, width]}")
        decoded.append(mask_utils.decode(rle))
    coverage = np.sum(np.stack(decoded, axis=0), axis=0, dtype=np.int32)
    keep = coverage == 1 if mode == "official" else coverage > 0
    return keep.astype(np.uint8)


class Refer:
    """Index of one referring dataset: refs, sentences, annotations, images, categories.

    Opening validates the records that the datasets rely on and raises `LAVTUserError`
    naming the file and record for a missing file, a damaged file, a ref without its
    annotation or image, or an empty expression. Images are not opened here (see
    `check_image` and `load_image`).
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split_by: str = "unc",
        *,
        image_dir: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        if not self.root.is_dir():
            raise LAVTUserError(
                f"data root {self.root} does not exist; pass the folder that holds "
                f"'{dataset}/' and 'images/' (the refer-API layout)"
            )
        data_dir = self.root / dataset
        if not data_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name != "images")
            raise LAVTUserError(
                f"dataset folder {data_dir} does not exist (found: {', '.join(present) or 'nothing'}); "
                "check --data-root and --dataset"
            )
        self.refs_file = refs_path(self.root, dataset, split_by)
        if not self.refs_file.is_file():
            choices = sorted(p.name for p in data_dir.glob("refs(*).p"))
            raise LAVTUserError(
                f"refs file {self.refs_file} does not exist (found: {', '.join(choices) or 'none'}); "
                "check --split-by (RefCOCO/RefCOCO+: unc; G-Ref: umd or google)"
            )
        self.instances_file = data_dir / "instances.json"
        if not self.instances_file.is_file():
            raise LAVTUserError(
                f"annotation file {self.instances_file} does not exist; it comes with the refs "
                "files of the refer-API release"
            )
        self.image_dir = Path(image_dir) if image_dir is not None else default_image_dir(self.root, dataset)

        refs = _load_pickle(self.refs_file)
        instances = _load_json(self.instances_file)
        self._reading = str(self.refs_file)
        try:
            self._index(refs, instances)
        except LAVTUserError:
            raise  # already names its record
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            # A value of the wrong type or form (an id that is not a number, ...): name the record.
            raise LAVTUserError(
                f"{self._reading} is malformed ({type(exc).__name__}: {exc}); fix or drop that record"
            ) from exc

    # ------------------------------------------------------------------ indexing
    def _index(self, refs: Any, instances: Any) -> None:
        if not isinstance(refs, list):
            raise LAVTUserError(f"refs file {self.refs_file} must hold a list of refs, got {type(refs).__name__}")
        if not isinstance(instances, dict):
            raise LAVTUserError(f"{self.instances_file} must hold a JSON object")
        for key in ("images", "annotations"):
            if not isinstance(instances.get(key), list):
                raise LAVTUserError(f"{self.instances_file} has no '{key}' list")

        self.images: dict[int, dict] = {}
        for i, image in enumerate(instances["images"]):
            self._reading = f"{self.instances_file}: images[{i}]"
            if not isinstance(image, dict):
                raise LAVTUserError(f"{self._reading} is a {type(image).__name__}, not an object")
            missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
            if missing:
                raise LAVTUserError(f"{self.instances_file}: images[{i}] lacks {', '.join(missing)}")
            self.images[int(image["id"])] = image
        self.anns: dict[int, dict] = {}
        for i, ann in enumerate(instances["annotations"]):
            self._reading = f"{self.instances_file}: annotations[{i}]"
            if not isinstance(ann, dict):
                raise LAVTUserError(f"{self._reading} is a {type(ann).__name__}, not an object")
            missing = [k for k in ("id", "image_id", "segmentation") if k not in ann]
            if missing:
                raise LAVTUserError(f"{self.instances_file}: annotations[{i}] lacks {', '.join(missing)}")
            self.anns[int(ann["id"])] = ann
        self._reading = f"{self.instances_file}: categories"
        self.categories: dict[int, str] = {int(c["id"]): c["name"] for c in instances.get("categories") or []}

        self.refs: dict[int, dict] = {}
        self.sentences: dict[int, dict] = {}
        self.sentence_ref: dict[int, int] = {}
        self.image_refs: dict[int, list[int]] = {}
        where = f"refs file {self.refs_file}"
        for i, ref in enumerate(refs):
            ref_id = self._ref_record(where, i, ref)
            if int(ref["ann_id"]) not in self.anns:
                raise LAVTUserError(
                    f"{where}: ref_id {ref_id} points to ann_id {ref['ann_id']}, which is not in "
                    f"{self.instances_file}; the two files do not belong together"
                )
            if int(ref["image_id"]) not in self.images:
                raise LAVTUserError(
                    f"{where}: ref_id {ref_id} points to image_id {ref['image_id']}, which is not in "
                    f"{self.instances_file}; the two files do not belong together"
                )
            self._index_sentences(ref, ref_id, where)
            self.refs[ref_id] = ref
            self.image_refs.setdefault(int(ref["image_id"]), []).append(ref_id)

    def _ref_record(self, where: str, i: int, ref: Any) -> int:
        """Check record `i` of the refs file (a dict with every ref key and a new ref_id);
        returns its ref_id."""
        self._reading = f"{where}: record {i}"
        if not isinstance(ref, dict):
            raise LAVTUserError(f"{where}: record {i} is a {type(ref).__name__}, not a dict")
        missing = [k for k in _REF_KEYS if k not in ref]
        if missing:
            raise LAVTUserError(f"{where}: record {i} (ref_id {ref.get('ref_id')}) lacks {', '.join(missing)}")
        ref_id = int(ref["ref_id"])
        if ref_id in self.refs:
            raise LAVTUserError(f"{where}: ref_id {ref_id} appears twice")
        return ref_id

    def _index_sentences(self, ref: dict, ref_id: int, where: str) -> None:
        """Check the sentences of `ref` (a non-empty list of dicts with a non-blank 'raw' and
        a 'sent_id') and index them."""
        if not isinstance(ref["sentences"], list) or not ref["sentences"]:
            raise LAVTUserError(f"{where}: ref_id {ref_id} has no sentences (a non-empty list)")
        for sentence in ref["sentences"]:
            if not isinstance(sentence, dict):
                raise LAVTUserError(f"{where}: a sentence of ref_id {ref_id} is a {type(sentence).__name__}, not a dict")
            missing = [k for k in _SENTENCE_KEYS if k not in sentence]
            if missing:
                raise LAVTUserError(f"{where}: a sentence of ref_id {ref_id} lacks {', '.join(missing)}")
            raw = sentence["raw"]
            if not isinstance(raw, str) or not raw.strip():
                raise LAVTUserError(
                    f"{where}: ref_id {ref_id}, sent_id {sentence['sent_id']} has an empty expression "
                    f"({raw!r}); fix or drop that sentence"
                )
            self.sentences[int(sentence["sent_id"])] = sentence
            self.sentence_ref[int(sentence["sent_id"])] = ref_id

    # ------------------------------------------------------------------ queries
    def split_names(self) -> list[str]:
        """The split labels present in the refs file, in first-seen order."""
        return list(dict.fromkeys(str(r["split"]) for r in self.refs.values()))

    def ref_ids(self, split: str | None = None) -> list[int]:
        """Ref ids of `split` in file order (None: all).

        Same selection as the refer API: 'testA'/'testB'/'testC' also take combined labels
        such as 'testAB', 'test' takes every label containing 'test'.
        """
        if split is None:
            return list(self.refs)
        if split in ("testA", "testB", "testC"):
            keep = lambda s: s.startswith("test") and split[-1] in s[4:]  # noqa: E731
        elif split == "test":
            keep = lambda s: "test" in s  # noqa: E731
        else:
            keep = lambda s: s == split  # noqa: E731
        selected = [ref_id for ref_id, ref in self.refs.items() if keep(str(ref["split"]))]
        if not selected:
            raise LAVTUserError(
                f"split {split!r} has no refs in {self.refs_file} (splits present: "
                f"{', '.join(self.split_names()) or 'none'})"
            )
        return selected

    def image_ids(self, ref_ids: Iterable[int]) -> list[int]:
        """Distinct image ids of the given refs, in first-seen order."""
        return list(dict.fromkeys(int(self.refs[r]["image_id"]) for r in ref_ids))

    def split_counts(self) -> dict[str, tuple[int, int, int]]:
        """split label -> (refs, expressions, images) as stored (no test/testA merging)."""
        refs: Counter = Counter()
        sentences: Counter = Counter()
        images: dict[str, set] = {}
        for ref in self.refs.values():
            split = str(ref["split"])
            refs[split] += 1
            sentences[split] += len(ref["sentences"])
            images.setdefault(split, set()).add(int(ref["image_id"]))
        return {s: (refs[s], sentences[s], len(images[s])) for s in refs}

    def image_path(self, image_id: int) -> Path:
        """Path of the image file of `image_id`."""
        return self.image_dir / self.images[int(image_id)]["file_name"]

    def load_image(self, image_id: int) -> Image.Image:
        """Open and decode the RGB image of `image_id`; `LAVTUserError` names the file when it cannot."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise LAVTUserError(
                f"image {path} (image_id {image_id}) does not exist; check that the images are under "
                f"{self.image_dir}, or open the dataset with skip_unreadable=True"
            )
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise LAVTUserError(
                f"image {path} (image_id {image_id}) cannot be decoded ({exc}); the file is corrupt or "
                "truncated: replace it, or open the dataset with skip_unreadable=True"
            ) from exc

    def check_image(self, image_id: int, decode: bool = True) -> str | None:
        """None when the image file is usable, else the reason ('missing' or the decoder's message).

        decode=False only checks that the file exists; decode=True decodes it completely
        (JPEG at reduced scale, which still reads every byte) to catch truncated files.
        """
        path = self.image_path(image_id)
        if not path.is_file():
            return "missing"
        if not decode:
            return None
        try:
            with Image.open(path) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return str(exc) or type(exc).__name__
        return None

    def mask(self, ref_id: int, mode: str = "any") -> np.ndarray:
        """uint8 (H, W) mask of the object of `ref_id` at the original image resolution."""
        ref = self.refs[int(ref_id)]
        ann = self.anns[int(ref["ann_id"])]
        image = self.images[int(ref["image_id"])]
        return self._decode(ann, int(image["height"]), int(image["width"]), mode, ref_id)

    def _decode(self, ann: dict, height: int, width: int, mode: str, ref_id: int) -> np.ndarray:
        """`decode_segmentation` of `ann`, any failure reported as a bad record of `ref_id`."""
        try:
            return decode_segmentation(ann["segmentation"], height, width, mode)
        except LAVTUserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad record
            raise LAVTUserError(
                f"{self.instances_file}: annotation {ann['id']} (ref_id {ref_id}) has an unusable "
                f"segmentation: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return (
            f"Refer(root={str(self.root)!r}, dataset={self.dataset!r}, split_by={self.split_by!r}, "
            f"refs={len(self.refs)}, images={len(self.image_refs)})"
        )
