"""`lavt data`: inspect a referring dataset (`info`), generate the synthref dataset (`synth`), import
your own data (`import`) or look at any dataset (`view`; both in `data_import.py`)."""
from __future__ import annotations

import argparse
import sys
import warnings

from lavt.cli import data_import
from lavt.errors import LAVTUserError


def _pair(text: str) -> tuple[int, int]:
    """'160-256' or '200' -> (min, max)."""
    parts = text.replace(",", "-").split("-")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from exc
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}")
    return values[0], values[1]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect, generate, import or view a referring dataset")
    commands = p.add_subparsers(dest="data_command", metavar="{info,synth,import,view}")
    commands.required = True

    info = commands.add_parser(
        "info",
        help="counts per split against the published sizes; missing or unreadable images",
        description="Count refs, expressions and images per split of a refer-format dataset, compare "
                    "them with the published sizes and name missing or unreadable image files. "
                    "Exit code 1 when something is missing, unreadable or differs.",
    )
    info.add_argument("--data-root", required=True, help="folder holding <dataset>/ and images/")
    info.add_argument("--dataset", required=True,
                      help="refcoco, refcoco+, refcocog, synthref, grefcoco, synthgref, rrsisd, refsegrs, synthrs, ...")
    info.add_argument("--split-by", default="unc", help="unc (RefCOCO/RefCOCO+/synthref), umd or google (G-Ref)")
    info.add_argument("--image-dir", "--image-root", dest="image_dir", default=None,
                      help="image folder if not the standard one under --data-root")
    info.add_argument("--check-images", choices=["none", "exists", "decode"], default="exists",
                      help="'decode' also decodes every image to find truncated files (slow on COCO)")
    info.add_argument("--max-listed", type=int, default=10, help="image problems listed by name")
    info.set_defaults(func=run)

    synth = commands.add_parser(
        "synth",
        help="generate the synthref dataset in the refer layout",
        description="Write ROOT/synthref/refs(unc).p, ROOT/synthref/instances.json and ROOT/images/synthref/: "
                    "scenes of coloured shapes with expressions by attribute, position and relation, each "
                    "naming exactly one object. Splits train/val/testA/testB by image; testA refers only to "
                    "circles, rings and stars, testB only to squares, triangles and crosses. Read it with "
                    "--dataset synthref --split-by unc.",
    )
    synth.add_argument("--out", required=True, help="data root to write into")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--images", type=int, default=1000, help="number of images (all splits)")
    synth.add_argument("--style", choices=["shapes", "aerial"], default="shapes",
                       help="shapes: synthref (the default); aerial: synthrs, top-down scenes (roads, vehicles, buildings, "
                            "storage tanks, trees, courts) in the RRSIS-D layout, read with --dataset synthrs")
    synth.add_argument("--image-size", type=_pair, default=None, metavar="MIN-MAX",
                       help="image side length range in pixels (default 160-256; aerial: 128-160)")
    synth.add_argument("--objects", type=_pair, default=(2, 6), metavar="MIN-MAX",
                       help="objects per image (default 2-6)")
    synth.add_argument("--kinds", default="attribute,position,relation",
                       help="comma-separated expression kinds to write")
    synth.add_argument("--expressions-per-object", type=int, default=3)
    synth.add_argument("--occlusion", type=float, default=0.25, help="chance of a partly hidden object per image")
    synth.add_argument("--image-format", choices=["jpg", "png"], default="jpg")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing synthref under --out")
    synth.add_argument("--generalized", action="store_true",
                       help="also write ROOT/synthgref/grefs(unc).json: the same scenes with multi-target and no-target "
                            "expressions added (gRefCOCO layout; --dataset synthgref)")
    synth.set_defaults(func=run)
    data_import.register(commands)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so `lavt --help` does not load numpy, PIL and pycocotools.
    if args.data_command == "info":
        from lavt.data.info import dataset_info

        info = dataset_info(args.data_root, args.dataset, args.split_by, check_images=args.check_images,
                            image_dir=args.image_dir)
        print(info.format(max_listed=args.max_listed))
        for message in info.warnings:
            warnings.warn(message, stacklevel=1)
        return 0 if info.ok else 1
    if args.style == "aerial":
        from lavt.data.synthref.aerial import generate_aerial

        if args.generalized:
            raise LAVTUserError("--generalized writes the shapes scenes' gRefCOCO variant; leave it out with --style aerial")
        print(generate_aerial(args.out, seed=args.seed, num_images=args.images, image_size=args.image_size or (128, 160),
                              expressions_per_object=args.expressions_per_object, overwrite=args.overwrite).format())
        sys.stdout.flush()
        return 0
    from lavt.data.synthref import generate

    summary = generate(
        args.out, seed=args.seed, num_images=args.images, image_size=args.image_size or (160, 256), objects=args.objects,
        kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
        expressions_per_object=args.expressions_per_object, occlusion=args.occlusion,
        image_format=args.image_format, overwrite=args.overwrite,
    )
    print(summary.format())
    if args.generalized:
        from lavt.data.synthref.language_generalized import generate_generalized

        print(generate_generalized(args.out, seed=args.seed).format())
    sys.stdout.flush()
    return 0
