"""`lavt predict --checkpoint C IMAGE "expression" ... --out DIR`: masks and overlays as PNG."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lavt.runtime.prediction import Prediction


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment what each expression names in an image",
        description="Writes, per expression, a binary mask PNG (255 = object) and an overlay PNG "
        "at the image's original resolution.",
    )
    p.add_argument("--checkpoint", "-c", required=True, type=Path, help="model folder, training checkpoint or official .pth")
    p.add_argument("image", type=Path, help="image file (any format Pillow reads)")
    p.add_argument("expressions", nargs="*", help="one or more referring expressions")
    p.add_argument("--expressions-file", "-f", type=Path, default=None,
                   help="UTF-8 text file with one expression per line (blank lines are skipped)")
    p.add_argument("--out", "-o", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    p.add_argument("--graphs", default=None, choices=["float32", "int8"],
                   help="exported folder: run its float32 or int8 graphs (default: the folder's choice)")
    p.set_defaults(func=run)


def read_expressions_file(path: Path) -> list[str]:
    """One expression per line of a UTF-8 file; blank lines are skipped."""
    from lavt.errors import LAVTUserError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LAVTUserError(f"expressions file {path} cannot be read: {exc.strerror or exc}; check the path") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LAVTUserError(
            f"expressions file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from exc
    lines = [line.strip() for line in text.splitlines()]
    if not any(lines):
        raise LAVTUserError(f"expressions file {path} holds no expressions; write one per line")
    return [line for line in lines if line]


def result_line(k: int, r: Prediction, total: int, mask_path: Path, over_path: Path) -> str:
    """The line printed for one expression: its area, or "no such object" when the model says
    that the expression names nothing in the image (its mask is then empty)."""
    where = f"-> {mask_path}, {over_path}"
    if r.no_target:
        p = r.no_target_probability
        return f"[{k}] {r.expression!r}: no such object (no target" + (f", probability {p:.2f}" if p is not None else "") + f") {where}"
    return f"[{k}] {r.expression!r}: {r.area} px ({100.0 * r.area / total:.1f}% of the image) {where}"


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the library loads torch, which `lavt --help` must not wait for
    from PIL import Image

    from lavt.engine.config import check_writable
    from lavt.errors import LAVTUserError
    from lavt.inference import Predictor, load_image
    from lavt.visualize import overlay, save_png

    expressions = list(args.expressions)
    if args.expressions_file is not None:
        expressions += read_expressions_file(args.expressions_file)
    if not expressions:
        raise LAVTUserError("no expressions given: write them after the image or pass --expressions-file")
    check_writable("--out", args.out, folder=True)  # before the model runs, not after
    image = load_image(args.image)  # fail on a bad image before loading the model
    try:
        predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision, graphs=args.graphs)
    except RuntimeError as exc:  # e.g. an unavailable CUDA device
        raise LAVTUserError(f"could not load the model on {args.device}: {str(exc).splitlines()[0]}") from exc
    results = predictor.predict(image, expressions)
    stem = args.image.stem
    total = image.width * image.height
    written: list[Path] = []
    lines = []
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for k, r in enumerate(results, start=1):
            mask_path = args.out / f"{stem}_{k}_mask.png"
            over_path = args.out / f"{stem}_{k}_overlay.png"
            written.append(save_png(Image.fromarray(r.mask.astype("uint8") * 255), mask_path))
            written.append(save_png(overlay(image, r.mask), over_path))
            lines.append(result_line(k, r, total, mask_path, over_path))
    except OSError as exc:
        for path in written:  # all of this run's pictures or none of them
            path.unlink(missing_ok=True)
        raise LAVTUserError(
            f"could not write the results to {args.out} ({exc.strerror or exc}); nothing was kept: "
            "free some space or choose a writable --out"
        ) from exc
    print("\n".join(lines))
    return 0
