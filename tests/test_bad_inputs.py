"""The catalogue of bad inputs, part 1: images, expressions and output folders of `lavt predict`.

Each row of a table is one thing a user can get wrong. A refused input must give exit code 2,
exactly one stderr line `error: ...` with the row's key phrase (what, where, what to do), no
traceback, no output file and no input file changed (every file of the case and of the model
folder is hashed before and after); where the Python API applies, it raises `LAVTUserError`
with the same phrase. Inputs that must work (odd image modes, odd expressions) have a table of
their own. The other surfaces are in test_bad_inputs_models.py and test_bad_inputs_data.py.
"""
from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers import one_error_line, snapshot, tiny_model_folder
from lavt.cli import main
from lavt.errors import LAVTUserError
from lavt.inference import Predictor, load_image


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad_inputs")
    folder = tiny_model_folder(root / "model")
    return {"model": folder, "predictor": Predictor.from_pretrained(folder)}


# ---------------------------------------------------------------------- files to feed
def rgb(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def write(d: Path, name: str, data: bytes | Image.Image, **save: Any) -> Path:
    path = d / name
    if isinstance(data, Image.Image):
        data.save(path, **save)
    else:
        path.write_bytes(data)
    return path


def truncated(d: Path, name: str, fmt: str) -> Path:
    path = write(d, name, rgb(64, 64), format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def png_header_only(d: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR that declare `width` x `height` pixels, and no pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return write(d, "bomb.png", data)


def expressions_file(d: Path, data: bytes) -> Path:
    return write(d, "expressions.txt", data)


# ---------------------------------------------------------------------- the refusals
@dataclass
class Case:
    """`args(d, env)` writes the inputs into the case folder `d` and returns the CLI arguments
    after `lavt predict -c MODEL --out d/out`; `api(d, env)` is the Python call (or None)."""

    name: str
    phrase: str
    args: Callable[[Path, dict], list[str]]
    api: Callable[[Path, dict], Any] | None = None
    decodes: bool = True  # False: the API call must refuse before decoding any pixel


def folder(d: Path, name: str) -> Path:
    (d / name).mkdir()
    return d / name


def _image(d: Path) -> Path:
    return write(d, "photo.png", rgb())


REFUSED = [
    # images
    Case("image: missing path", r"image .*nope\.jpg does not exist; check the path",
         lambda d, e: [str(d / "nope.jpg"), "the dog"], lambda d, e: load_image(d / "nope.jpg")),
    Case("image: a directory", r"image .*folder_in is a folder, not an image file",
         lambda d, e: [str(folder(d, "folder_in")), "the dog"], lambda d, e: load_image(d / "folder_in")),
    Case("image: zero bytes", r"empty\.png is not a readable image: Pillow cannot identify it; give a PNG, JPEG",
         lambda d, e: [str(write(d, "empty.png", b"")), "the dog"], lambda d, e: load_image(d / "empty.png")),
    Case("image: truncated PNG",
         r"cut\.png is not a readable image: it cannot be decoded \(.*\); the file is damaged or truncated: save or download",
         lambda d, e: [str(truncated(d, "cut.png", "PNG")), "the dog"], lambda d, e: load_image(d / "cut.png")),
    Case("image: truncated JPEG",
         r"cut\.jpg is not a readable image: it cannot be decoded \(image file is truncated.*\); the file is damaged",
         lambda d, e: [str(truncated(d, "cut.jpg", "JPEG")), "the dog"], lambda d, e: load_image(d / "cut.jpg")),
    Case("image: a text file named .jpg", r"notes\.jpg is not a readable image: Pillow cannot identify it",
         lambda d, e: [str(write(d, "notes.jpg", b"shopping list: milk, eggs\n")), "the dog"],
         lambda d, e: load_image(d / "notes.jpg")),
    Case("image: header claims 100000 x 100000 (decompression bomb)",
         r"bomb\.png declares 10000\.0 MP, more than the limit of 89\.5 MP \(a decompression bomb .*not decoded: resize it first",
         lambda d, e: [str(png_header_only(d, 100_000, 100_000)), "the dog"], lambda d, e: load_image(d / "bomb.png"), False),
    Case("image: header claims 10000 x 10000, over the limit", r"bomb\.png declares 10000 x 10000 = 100\.0 MP, more than the limit "
         r"of 89\.5 MP \(a decompression bomb or a huge scan\); it was not decoded",
         lambda d, e: [str(png_header_only(d, 10_000, 10_000)), "the dog"], lambda d, e: load_image(d / "bomb.png"), False),
    # expressions
    Case("expression: empty", r"expression 1 is empty; describe the object",
         lambda d, e: [str(_image(d)), ""], lambda d, e: e["predictor"].predict(_image(d), [""])),
    Case("expression: whitespace only", r"expression 1 is empty",
         lambda d, e: [str(_image(d)), " \t "], lambda d, e: e["predictor"].predict(_image(d), [" \t "])),
    Case("expression: the second of three empty", r"expression 2 is empty",
         lambda d, e: [str(_image(d)), "the dog", "  ", "the cat"],
         lambda d, e: e["predictor"].predict(_image(d), ["the dog", "  ", "the cat"])),
    Case("expression: none at all", r"no expressions given",
         lambda d, e: [str(_image(d))], lambda d, e: e["predictor"].predict(_image(d), [])),
    Case("expressions file: not UTF-8", r"expressions file .*expressions\.txt is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8",
         lambda d, e: [str(_image(d)), "-f", str(expressions_file(d, "the dog\nthe caf\u00e9\n".encode("latin-1")))]),
    Case("expressions file: only blank lines", r"expressions\.txt holds no expressions; write one per line",
         lambda d, e: [str(_image(d)), "-f", str(expressions_file(d, b"\n  \n"))]),
    Case("expressions file: missing", r"expressions file .*absent\.txt cannot be read: No such file",
         lambda d, e: [str(_image(d)), "-f", str(d / "absent.txt")]),
    # output folders (runtime)
    Case("--out is a file", r"--out .*taken is a file, not a folder; choose another path",
         lambda d, e: [str(_image(d)), "the dog", "--out", str(write(d, "taken", b"x"))]),
    Case("--out cannot be created (a file is in the way)", r"--out .*taken/sub cannot be created: .*taken is a file",
         lambda d, e: [str(_image(d)), "the dog", "--out", str(write(d, "taken", b"x") / "sub")]),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
def test_refused(case: Case, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = case.args(tmp_path, env)
    argv = ["predict", "-c", str(env["model"]), *args] + ([] if "--out" in args else ["--out", str(tmp_path / "out")])
    before = snapshot(tmp_path, env["model"])
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, case.phrase)
    assert snapshot(tmp_path, env["model"]) == before
    if case.api is not None:
        if not case.decodes:
            monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
        with pytest.raises(LAVTUserError, match=case.phrase):
            case.api(tmp_path, env)


def test_a_write_that_fails_midway_keeps_nothing(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up (or permission is lost) at the third picture: the two written before
    are removed too, so the folder never holds a partial result."""
    image = _image(tmp_path)
    real_save, calls = Image.Image.save, []

    def failing_save(self, fp, *a, **k):  # noqa: ANN001
        calls.append(fp)
        if len(calls) == 3:
            raise PermissionError(13, "Permission denied")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    out = tmp_path / "out"
    assert main(["predict", "-c", str(env["model"]), str(image), "the dog", "the cat", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, r"could not write the results to .*out \(Permission denied\); nothing was kept")
    assert len(calls) == 3 and sorted(p.name for p in out.iterdir()) == []


# ---------------------------------------------------------------------- what must work
def animated_gif(d: Path) -> Path:
    frames = [Image.new("RGB", (20, 12), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return d / "anim.gif"


def multipage_tiff(d: Path) -> Path:
    pages = [Image.new("RGB", (20, 12), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    pages[0].save(d / "pages.tiff", save_all=True, append_images=pages[1:])
    return d / "pages.tiff"


def palette_with_transparency(d: Path) -> Path:
    im = Image.new("P", (20, 12), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 10, 12))
    im.save(d / "palette.png", transparency=0)  # index 0 (the right half) is transparent
    return d / "palette.png"


def exif_rotated(d: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb(30, 10).save(d / "rotated.jpg", exif=exif.tobytes())
    return d / "rotated.jpg"


@dataclass
class Works:
    """An input that must give exit code 0 and results at `size` (width, height); `check`
    looks at the RGB image that `load_image` makes of it."""

    name: str
    image: Callable[[Path], Path]
    size: tuple[int, int]
    expressions: tuple[str, ...] = ("the dog",)
    check: Callable[[np.ndarray], bool] = lambda a: True
    warning: str | None = None


WORKS = [
    Works("image: 1 x 1", lambda d: write(d, "dot.png", rgb(1, 1)), (1, 1)),
    Works("image: 4000 x 2, extremely elongated", lambda d: write(d, "strip.png", rgb(4000, 2)), (4000, 2)),
    Works("image: animated GIF gives its first frame", animated_gif, (20, 12), check=lambda a: (a == (255, 0, 0)).all()),
    Works("image: multi-page TIFF gives its first page", multipage_tiff, (20, 12), check=lambda a: (a == (255, 0, 0)).all()),
    Works("image: CMYK JPEG", lambda d: write(d, "cmyk.jpg", Image.new("CMYK", (20, 12), (0, 255, 255, 0))), (20, 12),
          check=lambda a: a[..., 0].min() > 200 and a[..., 1:].max() < 60),
    Works("image: 16-bit grey PNG", lambda d: write(d, "deep.png", Image.fromarray(np.full((12, 20), 65535, np.uint16))),
          (20, 12), check=lambda a: (a == 255).all()),
    Works("image: palette with transparency (over white)", palette_with_transparency, (20, 12),
          check=lambda a: (a[:, :10] == (255, 0, 0)).all() and (a[:, 10:] == 255).all()),
    Works("image: EXIF-rotated JPEG is shown upright", exif_rotated, (10, 30)),
    Works("expression: only punctuation", lambda d: write(d, "p.png", rgb()), (32, 24), ("?!...",)),
    Works("expression: emoji", lambda d: write(d, "p.png", rgb()), (32, 24), ("\U0001f436 next to the \U0001f697",)),
    Works("expression: non-Latin scripts", lambda d: write(d, "p.png", rgb()), (32, 24), ("左边的男人", "мужчина слева", "الرجل")),
    Works("expression: far too long (warn and cut)", lambda d: write(d, "p.png", rgb()), (32, 24), ("the dog " * 30,),
          warning=r"^warning: expression 1 is longer than 20 tokens and was cut \(as in training\)"),
]


@pytest.mark.parametrize("case", WORKS, ids=[c.name for c in WORKS])
def test_works(case: Works, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = case.image(tmp_path)
    out = tmp_path / "out"
    before = snapshot(path, env["model"])
    assert main(["predict", "-c", str(env["model"]), str(path), *case.expressions, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    if case.warning:
        assert len(err.strip().splitlines()) == 1 and re.search(case.warning, err), err
    else:
        assert err == ""
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == len(case.expressions) and len(list(out.glob("*_overlay.png"))) == len(case.expressions)
    assert all(Image.open(m).size == case.size for m in masks)
    assert snapshot(path, env["model"]) == before
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == case.size and case.check(np.asarray(loaded))


def test_out_without_write_permission(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder the user may not write to (simulated: the tests may run as root, who may write anywhere)."""
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **k: Path(path) != locked and real_access(path, mode, **k))
    image = _image(tmp_path)
    before = snapshot(tmp_path)
    assert main(["predict", "-c", str(env["model"]), str(image), "the dog", "--out", str(locked / "out")]) == 2
    one_error_line(capsys.readouterr().err, r"--out .*locked/out cannot be written: no write permission in .*locked; choose another path")
    assert snapshot(tmp_path) == before


def test_the_installed_command_is_the_same(env: dict, tmp_path: Path) -> None:
    """The same refusal from a real `python -m lavt` process: exit status 2, one stderr line,
    nothing on stdout (the cases above call `lavt.cli.main` in this process)."""
    import subprocess
    import sys

    truncated(tmp_path, "cut.jpg", "JPEG")
    done = subprocess.run([sys.executable, "-m", "lavt", "predict", "-c", str(env["model"]), str(tmp_path / "cut.jpg"), "the dog",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    one_error_line(done.stderr, r"cut\.jpg is not a readable image: it cannot be decoded")
    assert not (tmp_path / "out").exists()
