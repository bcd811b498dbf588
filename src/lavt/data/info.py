"""Counts of a referring dataset per split, checked against the published sizes.

A wrong download (RefCOCO+ refs with RefCOCO annotations, a partial image folder, the
google instead of the umd split of G-Ref) makes every number that follows meaningless,
so `lavt data info` says so before anyone trains: it counts refs, expressions and images
per split, compares them with the sizes the dataset papers publish, and names image files
that are missing or cannot be decoded.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lavt.data.grefcoco import open_refer
from lavt.errors import LAVTUserError

# (dataset, split_by) -> split -> (refs, expressions, images). Sources: the refer-API
# release statistics (Yu et al. 2016 for RefCOCO/RefCOCO+ unc, Nagaraja et al. 2016 for
# G-Ref umd, Mao et al. 2016 for G-Ref google). None: not published as a fixed number.
PUBLISHED_SIZES: dict[tuple[str, str], dict[str, tuple[int | None, int, int | None]]] = {
    ("refcoco", "unc"): {
        "train": (42404, 120624, 16994), "val": (3811, 10834, 1500),
        "testA": (1975, 5657, 750), "testB": (1810, 5095, 750),
    },
    ("refcoco+", "unc"): {
        "train": (42278, 120191, 16992), "val": (3805, 10758, 1500),
        "testA": (1975, 5726, 750), "testB": (1798, 4889, 750),
    },
    ("refcocog", "umd"): {
        "train": (42226, 80512, 21899), "val": (2573, 4896, 1300), "test": (5023, 9602, 2600),
    },
    ("refcocog", "google"): {
        "train": (44822, 85474, None), "val": (5000, 9536, None),
    },
    # RRSIS-D (Liu et al., CVPR 2024, the RMSIN release): one expression per object and image.
    ("rrsisd", "unc"): {"train": (12181, 12181, None), "val": (1740, 1740, None), "test": (3481, 3481, None)},
    # RefSegRS (Yuan et al., TGRS 2024): expressions per split file; refs depend on repeated ids.
    ("refsegrs", "unc"): {"train": (None, 2172, None), "val": (None, 431, None), "test": (None, 1817, None)},
}
# Image-expression pairs in all, as the remote-sensing papers state them.
PUBLISHED_TOTALS: dict[str, int] = {"rrsisd": 17402, "refsegrs": 4420}


@dataclass
class SplitInfo:
    """Counts of one split label as stored in the refs file."""

    refs: int
    expressions: int
    images: int
    kinds: dict[str, int] = field(default_factory=dict)  # synthref: expressions per kind
    no_target: int | None = None  # generalised datasets: expressions naming nothing
    multi_target: int | None = None  # ... and naming several objects


@dataclass
class DatasetInfo:
    """What `dataset_info` found: counts, problems, and the warnings to show."""

    root: Path
    dataset: str
    split_by: str
    refs_file: Path
    image_dir: Path
    splits: dict[str, SplitInfo]
    published: dict[str, tuple[int | None, int, int | None]] | None
    missing_images: list[Path] = field(default_factory=list)
    unreadable_images: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images_checked: str = "exists"
    published_total: int | None = None  # expressions in all (remote-sensing datasets)
    size_mismatches: int | None = None  # RRSIS-D: images whose file differs in size from their masks

    @property
    def ok(self) -> bool:
        """True when nothing is missing or unreadable and every count matches."""
        return not (self.missing_images or self.unreadable_images or self.warnings)

    def format(self, max_listed: int = 10) -> str:
        """A table of counts (with the published numbers beside), then the problems found."""
        lines = [f"{self.dataset} ({self.split_by}) at {self.root}"]
        header = f"{'split':<10}{'refs':>8}{'expressions':>13}{'images':>8}"
        generalized = any(i.no_target is not None for i in self.splits.values())
        if generalized:
            header += f"{'no-target':>11}{'multi-target':>14}"
        if self.published:
            header += f"   {'published refs / expressions / images':<38}"
        lines.append(header)
        names = sorted(set(self.splits) | set(self.published or {}), key=_split_order)
        for split in names:
            info = self.splits.get(split)
            row = f"{split:<10}" + (f"{info.refs:>8}{info.expressions:>13}{info.images:>8}" if info else
                                     f"{'-':>8}{'-':>13}{'-':>8}")
            if generalized and info:
                row += f"{info.no_target:>11}{info.multi_target:>14}"
            if self.published:
                pub = self.published.get(split)
                if pub:
                    row += f"   {_num(pub[0])} / {pub[1]} / {_num(pub[2])}"
                    row += "" if info and _matches(info, pub) else "   <- differs"
                else:
                    row += "   (not published)"
            lines.append(row)
        kinds = Counter()
        for info in self.splits.values():
            kinds.update(info.kinds)
        if kinds:
            lines.append("expression kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        if self.published_total is not None:
            total = sum(i.expressions for i in self.splits.values())
            lines.append(f"total: {total} expressions, published {self.published_total}"
                         + ("" if total == self.published_total else "   <- differs"))
        if self.size_mismatches:
            lines.append(f"{self.size_mismatches} image(s) differ in size from their masks: masks are cropped/padded "
                         "at the bottom/right to the image, not stretched")
        if self.published is None:
            lines.append(f"no published sizes for {self.dataset} ({self.split_by}); counts not checked")
        lines.append(f"images under {self.image_dir} ({self.images_checked} checked): "
                     f"{len(self.missing_images)} missing, {len(self.unreadable_images)} unreadable")
        for path in self.missing_images[:max_listed]:
            lines.append(f"  missing: {path}")
        for path, reason in self.unreadable_images[:max_listed]:
            lines.append(f"  unreadable: {path} ({reason})")
        hidden = max(0, len(self.missing_images) - max_listed) + max(0, len(self.unreadable_images) - max_listed)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def _split_order(split: str) -> tuple[int, str]:
    known = ("train", "val", "test", "testA", "testB", "testC")
    return (known.index(split) if split in known else len(known), split)


def _num(value: int | None) -> str:
    return "?" if value is None else str(value)


def _matches(info: SplitInfo, published: tuple[int | None, int, int | None]) -> bool:
    refs, expressions, images = published
    return (refs is None or info.refs == refs) and info.expressions == expressions and (images is None or info.images == images)


def dataset_info(
    root: str | Path,
    dataset: str,
    split_by: str,
    *,
    check_images: str = "exists",
    image_dir: str | Path | None = None,
) -> DatasetInfo:
    """Count refs/expressions/images per split, compare with the published sizes, check images.

    check_images: 'none', 'exists' (stat every image file) or 'decode' (also decode every
    image, which finds truncated files but reads the whole image folder).
    """
    if check_images not in ("none", "exists", "decode"):
        raise LAVTUserError(f"check_images must be 'none', 'exists' or 'decode', got {check_images!r}")
    refer = open_refer(root, dataset, split_by, image_dir=image_dir)
    splits: dict[str, SplitInfo] = {}
    for split, (refs, expressions, images) in refer.split_counts().items():
        splits[split] = SplitInfo(refs, expressions, images)
    if getattr(refer, "generalized", False):
        for split, c in refer.generalized_counts().items():
            splits[split].no_target, splits[split].multi_target = c["no_target"], c["multi_target"]
    for ref in refer.refs.values():
        for sentence in ref["sentences"]:
            if "kind" in sentence:
                kinds = splits[str(ref["split"])].kinds
                kinds[sentence["kind"]] = kinds.get(sentence["kind"], 0) + 1

    published = PUBLISHED_SIZES.get((dataset, split_by))
    info = DatasetInfo(
        root=Path(root), dataset=dataset, split_by=split_by, refs_file=refer.refs_file,
        image_dir=refer.image_dir, splits=splits, published=published, images_checked=check_images,
    )
    if published:
        for split, pub in published.items():
            have = splits.get(split)
            if have is None:
                info.warnings.append(f"split {split} is missing from {refer.refs_file} (published: {pub[1]} expressions)")
            elif not _matches(have, pub):
                info.warnings.append(
                    f"split {split} has {have.refs} refs / {have.expressions} expressions / {have.images} images; "
                    f"published {_num(pub[0])} / {pub[1]} / {_num(pub[2])} "
                    "(a different release, a wrong --split-by, or a damaged file?)"
                )
        for split in splits:
            if split not in published:
                info.warnings.append(f"split {split} in {refer.refs_file} is not a published split of {dataset} "
                                     f"({split_by})")
    info.published_total = PUBLISHED_TOTALS.get(dataset)
    if info.published_total is not None:
        total = sum(i.expressions for i in splits.values())
        if total != info.published_total:
            info.warnings.append(f"{dataset} has {total} expressions in all; published {info.published_total}")
    if check_images != "none" and hasattr(refer, "size_mismatches"):
        info.size_mismatches = len(refer.size_mismatches(refer.image_refs))
    if check_images != "none":
        for image_id in refer.image_refs:
            reason = refer.check_image(image_id, decode=check_images == "decode")
            if reason == "missing":
                info.missing_images.append(refer.image_path(image_id))
            elif reason is not None:
                info.unreadable_images.append((refer.image_path(image_id), reason))
    return info
