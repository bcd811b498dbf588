"""`lavt data import` and `lavt data view`: bring your own data, and look at any dataset."""
from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add `import` and `view` to the `lavt data` subcommands."""
    imp = commands.add_parser(
        "import",
        help="import your own data (JSON Lines, COCO + expressions, or a mask folder) in the refer layout",
        description="Write OUT/NAME/refs(<split-by>).p, OUT/NAME/instances.json and OUT/images/NAME/ from SOURCE, "
                    "so that lavt data info/view/train/evaluate --data-root OUT --dataset NAME read it. SOURCE is a "
                    ".jsonl file (one object per line: image, expressions, mask | polygons | rle, split?, category?), "
                    "a COCO instances .json with --expressions (CSV or JSONL of annotation_id, expression[, split]), "
                    "or a folder with images/NAME.jpg, masks/NAME__<k>.png and expressions.csv (mask_file, "
                    "expression[, split, category]). Every record is checked first; a bad one stops the import "
                    "with its file and line, and nothing is written (unless --skip-bad).",
    )
    imp.add_argument("source", help="the .jsonl file, COCO instances .json, or folder")
    imp.add_argument("--out", required=True, help="data root to write into")
    imp.add_argument("--name", required=True, help="dataset name (the --dataset of the other commands)")
    imp.add_argument("--format", dest="fmt", choices=["jsonl", "coco", "folder"], default=None,
                     help="source format (default: from SOURCE: folder, .jsonl or .json)")
    imp.add_argument("--expressions", default=None, help="COCO source: CSV or JSONL of annotation_id, expression[, split]")
    imp.add_argument("--images", dest="image_dir", default=None,
                     help="COCO source: folder of the images' file_name (default: the instances file's folder)")
    imp.add_argument("--split-by", default="unc", help="partition name in refs(<split-by>).p (default unc)")
    imp.add_argument("--splits", default="0.8,0.1,0.1",
                     help="fractions of images for train,val,test when the records give no split "
                          "(or name them: train=0.9,val=0.1); default 0.8,0.1,0.1")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split by image")
    links = imp.add_mutually_exclusive_group()
    links.add_argument("--copy-images", dest="link_images", action="store_false", default=False,
                       help="copy the images under OUT/images/NAME/ (default)")
    links.add_argument("--link-images", dest="link_images", action="store_true",
                       help="symlink the images instead of copying them")
    imp.add_argument("--skip-bad", action="store_true",
                     help="import the good records and list the bad ones in OUT/NAME/skipped.jsonl")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name under --out")
    imp.set_defaults(func=run_import)

    view = commands.add_parser(
        "view",
        help="contact sheet (and HTML page) of a dataset's samples with their masks and expressions",
        description="Draw samples of a refer-format dataset (RefCOCO family, synthref, imported sets): each the image "
                    "with its mask overlaid, its expressions underneath, and the split and ref/image/annotation ids.",
    )
    view.add_argument("--data-root", required=True, help="folder holding <dataset>/ and images/")
    view.add_argument("--dataset", required=True, help="refcoco, synthref, an imported NAME, ...")
    view.add_argument("--split-by", default="unc", help="unc (default), umd or google (G-Ref)")
    view.add_argument("--split", default=None, help="draw from this split only (default: all)")
    view.add_argument("--num", type=int, default=24, help="number of samples (default 24)")
    view.add_argument("--seed", type=int, default=0, help="seed of the sample draw")
    view.add_argument("--columns", type=int, default=6, help="tiles per row of the sheet")
    view.add_argument("--tile", type=int, default=160, help="picture side of a tile in pixels (default 160)")
    view.add_argument("--image-dir", default=None, help="image folder if not the standard one under --data-root")
    view.add_argument("--out", default=None, help="contact sheet PNG to write")
    view.add_argument("--html", dest="html_dir", default=None, help="folder for a static page of the same samples")
    view.set_defaults(func=run_view)


def run_import(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so `lavt --help` does not load numpy, PIL and pycocotools.
    from lavt.data.importer import import_dataset

    summary = import_dataset(
        args.source, args.out, args.name, fmt=args.fmt, expressions=args.expressions, image_dir=args.image_dir,
        split_by=args.split_by, splits=args.splits, seed=args.seed, link_images=args.link_images,
        skip_bad=args.skip_bad, overwrite=args.overwrite,
    )
    print(summary.format())
    return 0


def run_view(args: argparse.Namespace) -> int:
    from lavt.data.view import view_dataset

    written = view_dataset(
        args.data_root, args.dataset, args.split_by, split=args.split, num=args.num, seed=args.seed,
        columns=args.columns, size=args.tile, out=args.out, html_dir=args.html_dir, image_dir=args.image_dir,
    )
    for path in written:
        print(f"wrote {path}")
    return 0
