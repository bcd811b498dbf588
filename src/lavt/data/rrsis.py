"""Readers of the remote-sensing referring datasets RRSIS-D and RefSegRS.

RRSIS-D (Liu et al., "Rotated Multi-Scale Interaction Network for Referring Remote Sensing
Image Segmentation", CVPR 2024; the RMSIN code base) is in the refer layout::

    <root>/rrsisd/refs(unc).p             refs, splits train / val / test
    <root>/rrsisd/instances.json          segmentations: a list holding one compressed RLE
    <root>/images/rrsisd/JPEGImages/      the 800 x 800 images

Some published images are 800 x 787 or 800 x 801 while their RLE says 800 x 800. The mask
is decoded at the RLE's own size and then cropped or padded (with background) at the
bottom and right edges to the image's size, never stretched; opening a split counts such
images in one warning.

RefSegRS (Yuan et al., "RRSIS: Referring Remote Sensing Image Segmentation", TGRS 2024; the
zhu-xlab/rrsis code base) is a folder of tiles::

    <root>/RefSegRS/images/<id>.tif       512 x 512 tiles, RGB or with extra bands
    <root>/RefSegRS/masks/<id>.tif        8-bit masks, 0 background / 255 object
    <root>/RefSegRS/output_phrase_{train,val,test}.txt   lines `<id> <expression>`

The id names both the image and its mask. Lines of one split that share an id become one ref
(one object) with several expressions. Only the first three bands of a TIFF are read (as
RGB); the first image with more bands says so once.

`open_remote_sensing` picks the reader; `lavt.data.grefcoco.open_refer` asks it first, so
every dataset class and command reads both.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lavt.data.refer import Refer
from lavt.errors import LAVTUserError

# Datasets in the RRSIS-D layout -> their image folder under the data root.
RRSISD_IMAGE_DIRS: dict[str, str] = {"rrsisd": "images/rrsisd/JPEGImages", "synthrs": "images/synthrs/JPEGImages"}
REFSEGRS_SPLITS = ("train", "val", "test")
PHRASE_FILE = "output_phrase_{}.txt"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def dataset_folder(root: str | Path, dataset: str) -> Path:
    """`<root>/<dataset>`, else a folder of `root` whose name matches it ignoring case
    (`--dataset refsegrs` finds `RefSegRS/`), else `<root>/<dataset>` (not existing)."""
    root = Path(root)
    exact = root / dataset
    if exact.is_dir() or not root.is_dir():
        return exact
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() == dataset.lower()), exact)


def is_refsegrs_layout(folder: Path) -> bool:
    """Whether `folder` holds `output_phrase_<split>.txt` files (the RefSegRS layout)."""
    return folder.is_dir() and any(folder.glob(PHRASE_FILE.format("*")))


def open_remote_sensing(root: str | Path, dataset: str, split_by: str = "unc", *, image_dir: str | Path | None = None) -> Refer | None:
    """The reader of a remote-sensing dataset (`RRSISDRefer`, `RefSegRSRefer`), None for any other."""
    if dataset.lower() in RRSISD_IMAGE_DIRS:
        return RRSISDRefer(root, dataset, split_by, image_dir=image_dir)
    if dataset.lower() == "refsegrs" or is_refsegrs_layout(dataset_folder(root, dataset)):
        return RefSegRSRefer(root, dataset, split_by, image_dir=image_dir)
    return None


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """`mask` cropped or padded with zeros at the bottom and right to (height, width); never resampled."""
    out = np.zeros((height, width), dtype=mask.dtype)
    h, w = min(height, mask.shape[0]), min(width, mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out


# ---------------------------------------------------------------------------------------
# RRSIS-D


class RRSISDRefer(Refer):
    """`Refer` over the RRSIS-D layout: masks brought to each image's real size (see module doc)."""

    def __init__(self, root: str | Path, dataset: str = "rrsisd", split_by: str = "unc", *, image_dir: str | Path | None = None) -> None:
        if image_dir is None:
            image_dir = Path(root) / RRSISD_IMAGE_DIRS.get(dataset.lower(), f"images/{dataset}/JPEGImages")
        super().__init__(root, dataset, split_by, image_dir=image_dir)
        self._sizes: dict[int, tuple[int, int]] = {}  # image_id -> (height, width) of the file

    def file_size(self, image_id: int) -> tuple[int, int]:
        """(height, width) of the image file from its header (the declared size when it is missing)."""
        image_id = int(image_id)
        if image_id not in self._sizes:
            info = self.images[image_id]
            size = (int(info["height"]), int(info["width"]))
            try:
                with Image.open(self.image_path(image_id)) as image:
                    size = (image.height, image.width)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                pass  # a missing or broken file is reported where the image is read
            self._sizes[image_id] = size
        return self._sizes[image_id]

    def _drawn_size(self, ref_id: int) -> tuple[int, int]:
        """(height, width) the annotation of `ref_id` was drawn at: its RLE's, else the declared one."""
        ref = self.refs[int(ref_id)]
        seg = self.anns[int(ref["ann_id"])]["segmentation"]
        rles = [seg] if isinstance(seg, dict) else seg if isinstance(seg, list) else []
        sizes = {tuple(int(v) for v in r["size"]) for r in rles if isinstance(r, dict) and "size" in r}
        if len(sizes) == 1:
            return next(iter(sizes))  # type: ignore[return-value]
        info = self.images[int(ref["image_id"])]
        return int(info["height"]), int(info["width"])

    def size_mismatches(self, image_ids: Iterable[int]) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
        """(image_id, file size, annotated size) for each image whose file differs from the size
        its masks were drawn at (reads every image's header once)."""
        found = []
        for image_id in image_ids:
            drawn = {self._drawn_size(r) for r in self.image_refs.get(int(image_id), [])}
            actual = self.file_size(image_id)
            wrong = sorted(s for s in drawn if s != actual)
            if wrong and self.image_path(image_id).is_file():
                found.append((int(image_id), actual, wrong[0]))
        return found

    def prepare_images(self, image_ids: Iterable[int]) -> int:
        """Read the sizes of these images and warn once, counting those whose file differs from
        their masks' size; returns that count."""
        image_ids = list(image_ids)
        found = self.size_mismatches(image_ids)
        if found:
            image_id, (h, w), (mh, mw) = found[0]
            warnings.warn(
                f"{self.dataset}: {len(found)} of {len(image_ids)} image(s) differ in size from their masks "
                f"(e.g. {self.image_path(image_id).name} is {w}x{h}, its mask {mw}x{mh}); the masks are cropped "
                "or padded at the bottom/right edges to the image, not stretched",
                stacklevel=3,
            )
        return len(found)

    def mask(self, ref_id: int, mode: str = "any") -> np.ndarray:
        """uint8 (H, W) mask at the image file's size: decoded at its own size, then cropped/padded."""
        ref = self.refs[int(ref_id)]
        ann = self.anns[int(ref["ann_id"])]
        drawn = self._drawn_size(ref_id)
        decoded = self._decode(ann, drawn[0], drawn[1], mode, ref_id)
        height, width = self.file_size(int(ref["image_id"]))
        return decoded if decoded.shape == (height, width) else fit_mask(decoded, height, width)


# ---------------------------------------------------------------------------------------
# RefSegRS


def read_bands(path: Path) -> np.ndarray:
    """Pixel array of an image file: (H, W) or (H, W, bands). TIFFs go through tifffile (any
    number of bands, planar or interleaved) when it is installed, the rest through Pillow."""
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile  # optional (the `rs` extra): multi-band TIFFs Pillow cannot open
        except ImportError:
            tifffile = None
        if tifffile is not None:
            array = np.asarray(tifffile.imread(path))
            if array.ndim == 3 and array.shape[0] < array.shape[-1] and array.shape[0] <= 16:
                array = np.moveaxis(array, 0, -1)  # planar (bands, H, W)
            return array
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        hint = " (a multi-band TIFF: pip install 'lavt[rs]' for tifffile)" if path.suffix.lower() in (".tif", ".tiff") else ""
        raise OSError(f"{exc}{hint}") from exc


def bands_to_rgb(array: np.ndarray) -> Image.Image:
    """RGB image of the first three bands (one band: grey). Non-8-bit data is scaled linearly
    from the image's own minimum..maximum to 0..255."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 2:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3:
        raise ValueError(f"unexpected pixel array of shape {array.shape}")
    rgb = array[..., :3]
    if rgb.dtype != np.uint8:
        rgb = rgb.astype(np.float64)
        low, high = float(rgb.min()), float(rgb.max())
        rgb = np.zeros_like(rgb) if high <= low else (rgb - low) * (255.0 / (high - low))
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


class RefSegRSRefer(Refer):
    """Index of a RefSegRS-layout folder with the queries of `Refer` (refs, splits, images,
    masks). Opening reads the phrase files and checks that every id has its image and mask;
    errors name the file and line."""

    def __init__(self, root: str | Path, dataset: str = "refsegrs", split_by: str = "unc", *,
                 image_dir: str | Path | None = None) -> None:
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        folder = dataset_folder(self.root, dataset)
        if not folder.is_dir():
            raise LAVTUserError(f"dataset folder {folder} does not exist (RefSegRS: <root>/RefSegRS/); check --data-root and --dataset")
        phrase_files = sorted(folder.glob(PHRASE_FILE.format("*")), key=lambda p: _split_rank(_split_of(p)))
        if not phrase_files:
            raise LAVTUserError(f"{folder} has no {PHRASE_FILE.format('<split>')} files (the RefSegRS layout); check --dataset")
        self.folder = folder
        self.refs_file = folder  # the phrase files live here; messages name the file itself
        self.image_dir = Path(image_dir) if image_dir is not None else folder / "images"
        self.mask_dir = folder / "masks"
        self.instances_file = self.mask_dir
        for what, path in (("image", self.image_dir), ("mask", self.mask_dir)):
            if not path.is_dir():
                raise LAVTUserError(f"{what} folder {path} does not exist; RefSegRS keeps {what}s as {path}/<id>.tif")
        self.images: dict[int, dict] = {}
        self.anns: dict[int, dict] = {}
        self.categories: dict[int, str] = {}
        self.refs: dict[int, dict] = {}
        self.sentences: dict[int, dict] = {}
        self.sentence_ref: dict[int, int] = {}
        self.image_refs: dict[int, list[int]] = {}
        self._ids: dict[str, int] = {}
        self._told_bands = False
        for path in phrase_files:
            self._read_phrases(path, _split_of(path))

    def _file_of(self, folder: Path, name: str) -> Path | None:
        return next((folder / f"{name}{s}" for s in IMAGE_SUFFIXES if (folder / f"{name}{s}").is_file()), None)

    def _read_phrases(self, path: Path, split: str) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise LAVTUserError(f"{path} is not UTF-8 text ({exc}); re-download it") from exc
        while lines and not lines[-1].strip():
            lines.pop()  # blank lines at the end of a file are not records
        refs_of_split: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            where = f"{path}:{number}"
            text = line.strip()
            if not text:
                raise LAVTUserError(f"{where} is empty; each line must be '<id> <expression>': delete the line")
            parts = text.split(maxsplit=1)
            if len(parts) < 2:
                raise LAVTUserError(f"{where} has the id {parts[0]!r} but no expression; each line must be '<id> <expression>'")
            name, raw = parts
            if name not in self._ids:
                image = self._file_of(self.image_dir, name)
                if image is None:
                    raise LAVTUserError(f"{where}: id {name!r} has no image {self.image_dir / name}.tif; add it or drop the line")
                mask = self._file_of(self.mask_dir, name)
                if mask is None:
                    raise LAVTUserError(f"{where}: id {name!r} has no mask {self.mask_dir / name}.tif; add it or drop the line")
                image_id = len(self._ids) + 1
                self._ids[name] = image_id
                self.images[image_id] = {"id": image_id, "file_name": image.name, "name": name}
                self.anns[image_id] = {"id": image_id, "image_id": image_id, "file_name": mask.name}
            image_id = self._ids[name]
            sent_id = len(self.sentences) + 1
            sentence = {"raw": raw, "sent": raw.lower(), "tokens": raw.lower().split(), "sent_id": sent_id}
            if name not in refs_of_split:
                ref_id = len(self.refs) + 1
                refs_of_split[name] = ref_id
                self.refs[ref_id] = {"ref_id": ref_id, "ann_id": image_id, "image_id": image_id, "category_id": -1, "split": split,
                                     "file_name": self.images[image_id]["file_name"], "sentences": [], "sent_ids": []}
                self.image_refs.setdefault(image_id, []).append(ref_id)
            ref = self.refs[refs_of_split[name]]
            ref["sentences"].append(sentence)
            ref["sent_ids"].append(sent_id)
            self.sentences[sent_id] = sentence
            self.sentence_ref[sent_id] = ref["ref_id"]

    def _read_rgb(self, path: Path) -> Image.Image:
        array = read_bands(path)
        bands = 1 if array.ndim == 2 else array.shape[-1]
        if bands > 3 and not self._told_bands:
            self._told_bands = True
            warnings.warn(f"{self.dataset}: {path.name} has {bands} bands; reading the first three as RGB", stacklevel=4)
        return bands_to_rgb(array)

    def load_image(self, image_id: int) -> Image.Image:
        """The RGB image of `image_id` (the first three bands of a multi-band TIFF)."""
        path = self.image_path(image_id)
        if not path.is_file():
            raise LAVTUserError(f"image {path} (image_id {image_id}) does not exist; put it back under {self.image_dir}")
        try:
            return self._read_rgb(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise LAVTUserError(f"image {path} (image_id {image_id}) cannot be decoded ({exc}); replace it") from exc

    def check_image(self, image_id: int, decode: bool = True) -> str | None:
        path = self.image_path(image_id)
        if not path.is_file():
            return "missing"
        if decode:
            try:
                read_bands(path)
            except (OSError, ValueError, SyntaxError) as exc:
                return str(exc) or type(exc).__name__
        return None

    def mask(self, ref_id: int, mode: str = "any") -> np.ndarray:
        """uint8 (H, W) mask of `ref_id` from `masks/<id>.tif` (object where the value is above
        127, or above 0 for a 0/1 mask). `mode` has no effect: the masks are rasters."""
        ref = self.refs[int(ref_id)]
        image_id = int(ref["image_id"])
        path = self.mask_dir / self.anns[image_id]["file_name"]
        if not path.is_file():
            raise LAVTUserError(f"mask {path} (ref_id {ref_id}) does not exist; put it back under {self.mask_dir}")
        try:
            array = read_bands(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise LAVTUserError(f"mask {path} (ref_id {ref_id}) cannot be read ({exc}); replace it") from exc
        if array.ndim == 3:
            array = array[..., 0]
        mask = (array > (127 if array.max(initial=0) > 1 else 0)).astype(np.uint8)
        image_path = self.image_path(image_id)
        try:
            with Image.open(image_path) as image:
                size = (image.height, image.width)
        except (OSError, UnidentifiedImageError, ValueError):
            size = mask.shape  # Pillow cannot read this TIFF's header; the dataset compares after decoding
        if mask.shape != size:
            raise LAVTUserError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is {size[1]}x{size[0]}; "
                                "the two files do not belong together")
        return mask

    def __repr__(self) -> str:
        return f"RefSegRSRefer(folder={str(self.folder)!r}, refs={len(self.refs)}, images={len(self.image_refs)})"


def _split_of(path: Path) -> str:
    return path.stem[len(PHRASE_FILE.split("{")[0]):]


def _split_rank(split: str) -> tuple[int, str]:
    return (REFSEGRS_SPLITS.index(split) if split in REFSEGRS_SPLITS else len(REFSEGRS_SPLITS), split)

