"""`lavt data import`: the three source formats on inputs drawn here, masks read back pixel for
pixel through the project's reader, the split rules, byte-identical re-runs, every bad record
named by file and line (and skipped with --skip-bad), and a short `lavt train --preset debug`
and `lavt evaluate` on an imported set."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lavt.cli import main
from lavt.data.importer import import_dataset, masks
from lavt.data.importer.validate import parse_fractions, split_images
from lavt.data.refer import Refer, decode_segmentation
from lavt.errors import LAVTUserError

H, W = 40, 48


def _shape(kind: str, h: int = H, w: int = W) -> np.ndarray:
    """A bool mask: 'ellipse', 'two' (two blobs) and 'diagonal' (two squares touching at one
    corner) are hole-free, 'ring' has a hole."""
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    if kind == "ellipse":
        draw.ellipse((4, 6, 21, 33), fill=255)
    elif kind == "ring":
        draw.rectangle((24, 4, 45, 30), fill=255)
        draw.rectangle((30, 10, 38, 20), fill=0)
    elif kind == "two":
        draw.polygon([(2, 36), (14, 30), (10, 39)], fill=255)
        draw.rectangle((30, 33, 40, 38), fill=255)
    elif kind == "diagonal":
        draw.rectangle((26, 30, 29, 33), fill=255)
        draw.rectangle((30, 34, 33, 37), fill=255)
    return np.asarray(image) > 0


def _image(path: Path, seed: int, h: int = H, w: int = W) -> Path:
    """A noisy RGB image (PNG, so its bytes are the test's)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _png(path: Path, mask: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(mask.astype(np.uint8) * 255)
    (picture.convert("RGB") if mode == "RGB" else picture).save(path)
    return path


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _jsonl_source(folder: Path, images: int = 4) -> tuple[Path, dict[tuple[str, str], np.ndarray]]:
    """A JSONL source: per image an ellipse and a ring as PNG masks (one of them RGB), a
    blob pair as polygons, a diagonal pair as RLE. Returns the file and (image, expression) -> mask."""
    records, expected = [], {}
    for i in range(images):
        _image(folder / "photos" / f"p{i}.png", seed=i)
        for kind in ("ellipse", "ring", "two", "diagonal"):
            mask = _shape(kind)
            text = f"the {kind} in photo {i}"
            record = {"image": f"photos/p{i}.png", "expressions": [text, f"{kind} number {i}"], "category": kind}
            if kind in ("ellipse", "ring"):
                record["mask"] = f"masks/p{i}_{kind}.png"
                _png(folder / record["mask"], mask, mode="RGB" if kind == "ring" else "L")
            elif kind == "two":
                record["polygons"] = [[2, 36, 14, 30, 10, 39], [30, 33, 41, 33, 41, 39, 30, 39]]
                mask = decode_segmentation(record["polygons"], H, W).astype(bool)
            else:
                record["rle"] = masks.rle(mask)
            records.append(record)
            expected[(f"p{i}.png", text)] = mask
    return _jsonl(folder / "data.jsonl", records), expected


def _read_back(root: Path, name: str) -> dict[tuple[str, str], np.ndarray]:
    refer = Refer(root, name)
    out = {}
    for ref_id, ref in refer.refs.items():
        out[(refer.images[ref["image_id"]]["file_name"], ref["sentences"][0]["raw"])] = refer.mask(ref_id).astype(bool)
    return out


def test_masks_become_exact_polygons_or_rle() -> None:
    checkerboard = np.indices((100, 100)).sum(axis=0) % 2 == 0  # 5,000 outlines: too many corners
    for kind, form, parts in (("ellipse", list, 1), ("two", list, 2), ("diagonal", list, 2), ("ring", dict, 1),
                              ("checkerboard", dict, 1)):
        mask = checkerboard if kind == "checkerboard" else _shape(kind)
        segmentation = masks.encode(mask)
        assert isinstance(segmentation, form) and (form is dict or len(segmentation) == parts), kind
        assert np.array_equal(decode_segmentation(segmentation, *mask.shape).astype(bool), mask), kind
    assert masks.encode(_shape("diagonal")) == [[26, 30, 30, 30, 30, 34, 26, 34], [30, 34, 34, 34, 34, 38, 30, 38]]
    rng = np.random.default_rng(0)
    for _ in range(40):  # speckled masks: whatever form is chosen, the pixels come back
        mask = rng.random((int(rng.integers(3, 30)), int(rng.integers(3, 30)))) > rng.uniform(0.3, 0.9)
        if mask.any():
            assert np.array_equal(decode_segmentation(masks.encode(mask), *mask.shape).astype(bool), mask)
    assert masks.polygons(np.ones((1, 1), bool)) == [[0, 0, 1, 0, 1, 1, 0, 1]]


def test_jsonl_import_reads_back_pixel_for_pixel(tmp_path: Path) -> None:
    source, expected = _jsonl_source(tmp_path / "src")
    summary = import_dataset(source, tmp_path / "data", "mine", splits="0.5,0.25,0.25")
    assert summary.polygons == 8 and summary.rles == 8  # ellipse and blobs as polygons; ring and diagonal as RLE
    back = _read_back(tmp_path / "data", "mine")
    assert back.keys() == expected.keys()
    for key, mask in expected.items():
        assert np.array_equal(back[key], mask), key
    refer = Refer(tmp_path / "data", "mine")
    assert sorted(refer.categories.values()) == ["diagonal", "ellipse", "ring", "two"]
    ref = refer.refs[1]
    assert [s["raw"] for s in ref["sentences"]] == ["the ellipse in photo 0", "ellipse number 0"]
    assert ref["sentences"][1]["tokens"] == ["ellipse", "number", "0"]
    for image_id in refer.image_refs:  # the images are copied byte for byte
        name = refer.images[image_id]["file_name"]
        assert refer.image_path(image_id).read_bytes() == (tmp_path / "src" / "photos" / name).read_bytes()
    assert summary.splits == {"train": (2, 8, 16), "val": (1, 4, 8), "test": (1, 4, 8)}


def test_coco_source_with_csv_and_jsonl_expressions(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    ring, ellipse = _shape("ring"), _shape("ellipse")
    _image(src / "img" / "a.png", 1)
    _image(src / "img" / "b.png", 2)
    uncompressed = {"size": [H, W], "counts": [int(c) for c in _runs(ring)]}
    instances = {
        "images": [{"id": 7, "file_name": "a.png", "height": H, "width": W},
                   {"id": 9, "file_name": "b.png", "height": H, "width": W}],
        "annotations": [{"id": 70, "image_id": 7, "category_id": 3, "segmentation": masks.encode(ellipse)},
                        {"id": 71, "image_id": 7, "category_id": 3, "segmentation": uncompressed},
                        {"id": 90, "image_id": 9, "category_id": 3, "segmentation": masks.rle(ring)},
                        {"id": 91, "image_id": 9, "category_id": 3, "segmentation": masks.encode(ellipse)}],
        "categories": [{"id": 3, "name": "blob"}],
    }
    (src / "instances.json").write_text(json.dumps(instances))
    with open(src / "expressions.csv", "w", newline="") as handle:
        rows = [("annotation_id", "expression", "split"), (70, "left blob", "train"), (71, "right, hollow blob", "train"),
                (70, "the oval", "train"), (90, "hollow one", "val")]  # 91 has no expression: left out
        csv.writer(handle).writerows(rows)
    import_dataset(src / "instances.json", tmp_path / "data", "fromcoco", expressions=src / "expressions.csv",
                   image_dir=src / "img")
    refer = Refer(tmp_path / "data", "fromcoco")
    assert [[s["raw"] for s in r["sentences"]] for r in refer.refs.values()] == [
        ["left blob", "the oval"], ["right, hollow blob"], ["hollow one"]]
    assert [r["split"] for r in refer.refs.values()] == ["train", "train", "val"]
    assert [refer.mask(r).astype(bool).sum() for r in refer.refs] == [ellipse.sum(), ring.sum(), ring.sum()]
    for ref_id, mask in zip(refer.refs, (ellipse, ring, ring)):
        assert np.array_equal(refer.mask(ref_id).astype(bool), mask)
    assert set(refer.categories.values()) == {"blob"}

    _jsonl(src / "expressions.jsonl", [{"annotation_id": 91, "expression": "oval on b"}])
    import_dataset(src / "instances.json", tmp_path / "data", "fromcoco2", expressions=src / "expressions.jsonl",
                   image_dir=src / "img", splits="train=1")
    refer = Refer(tmp_path / "data", "fromcoco2")
    assert np.array_equal(refer.mask(1).astype(bool), ellipse) and refer.split_names() == ["train"]


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: run lengths over the column-major pixels, starting with 0s."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
    return np.diff(np.concatenate([[0], edges])).tolist()


def _folder_source(folder: Path) -> dict[str, np.ndarray]:
    expected = {}
    rows = [("mask_file", "expression", "split")]
    for i, split in enumerate(("train", "train", "val")):
        _image(folder / "images" / f"shot{i}.png", seed=10 + i)
        for k, kind in enumerate(("ellipse", "ring")):
            name = f"shot{i}__{k}.png"
            _png(folder / "masks" / name, _shape(kind))
            expected[f"{kind} of shot {i}"] = _shape(kind)
            rows.append((name, f"{kind} of shot {i}", split))
    with open(folder / "expressions.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return expected


def test_folder_source_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    expected = _folder_source(tmp_path / "export")
    code = main(["data", "import", str(tmp_path / "export"), "--out", str(tmp_path / "data"), "--name", "tool"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "masks stored as polygons: 3, as RLE: 3" in out.splitlines()
    assert f"{'train':<10}{2:>8}{4:>8}{4:>13}" in out.splitlines() and f"{'val':<10}{1:>8}{2:>8}{2:>13}" in out
    refer = Refer(tmp_path / "data", "tool")
    for ref_id, ref in refer.refs.items():
        assert np.array_equal(refer.mask(ref_id).astype(bool), expected[ref["sentences"][0]["raw"]])
    assert refer.split_counts() == {"train": (4, 4, 2), "val": (2, 2, 1)}
    assert main(["data", "info", "--data-root", str(tmp_path / "data"), "--dataset", "tool"]) == 0


def test_split_rules() -> None:
    images = [f"img{i:02d}.jpg" for i in range(20)]
    plan = split_images(images, parse_fractions("0.6,0.2,0.2"), seed=0)
    assert sorted(plan) == images and [list(plan.values()).count(s) for s in ("train", "val", "test")] == [12, 4, 4]
    other = split_images(images, parse_fractions("0.6,0.2,0.2"), seed=1)
    assert other != plan and sorted(other.values()) == sorted(plan.values())
    assert split_images(images[::-1], parse_fractions("0.6,0.2,0.2"), seed=0) == plan  # order of arrival is irrelevant
    tiny = split_images(images[:3], parse_fractions("0.98,0.01,0.01"), seed=0)  # every split gets an image
    assert sorted(tiny.values()) == ["test", "train", "val"]
    assert parse_fractions("train=3,dev=1") == {"train": 0.75, "dev": 0.25}
    for bad in ("0.5,0.5,0.5,0.5", "a,b", "train=1,0.5", "0,0", "train=-1,val=2"):
        with pytest.raises(LAVTUserError, match="--splits"):
            parse_fractions(bad)


def test_no_image_in_two_splits_and_record_splits_kept(tmp_path: Path) -> None:
    source, _ = _jsonl_source(tmp_path / "src", images=6)
    import_dataset(source, tmp_path / "data", "split", splits="0.5,0.5", seed=3)
    refer = Refer(tmp_path / "data", "split")
    per_image = {}
    for ref in refer.refs.values():
        per_image.setdefault(ref["image_id"], set()).add(ref["split"])
    assert all(len(s) == 1 for s in per_image.values()) and len(per_image) == 6
    assert sorted(next(iter(s)) for s in per_image.values()) == ["train"] * 3 + ["val"] * 3

    lines = [json.loads(line) for line in source.read_text().splitlines()]
    for record in lines:
        record["split"] = "testA" if record["image"].endswith("p5.png") else "train"
    _jsonl(source, lines)
    import_dataset(source, tmp_path / "data", "given", splits="0.5,0.5")
    assert Refer(tmp_path / "data", "given").split_counts() == {"train": (20, 40, 5), "testA": (4, 8, 1)}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_inputs_and_seed_give_identical_bytes(tmp_path: Path) -> None:
    source, _ = _jsonl_source(tmp_path / "src")
    for out in ("a", "b"):
        import_dataset(source, tmp_path / out, "mine", seed=5)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and "mine/refs(unc).p" in a and "images/mine/p3.png" in a
    import_dataset(source, tmp_path / "c", "mine", seed=6)
    assert _tree(tmp_path / "c")["mine/refs(unc).p"] != a["mine/refs(unc).p"]
    assert not list(tmp_path.glob("*/.mine.import"))


def _bad_cases(folder: Path) -> dict[str, tuple[object, str]]:
    """name -> (the bad line 3 of a JSONL source, the reason that must be reported)."""
    _image(folder / "big.png", 9, h=H + 2)
    _png(folder / "small_mask.png", _shape("ellipse")[:30])
    _png(folder / "empty.png", np.zeros((H, W), bool))
    ellipse = masks.encode(_shape("ellipse"))
    folder_re = re.escape(str(folder))
    return {
        "missing image": ({"image": "nope.png", "expressions": ["x"], "polygons": ellipse},
                          rf"image {folder_re}/nope\.png does not exist; fix the path or add the image"),
        "mask size": ({"image": "p0.png", "expressions": ["x"], "mask": "small_mask.png"},
                      rf"mask {folder_re}/small_mask\.png is 48x30 pixels but its image {folder_re}/p0\.png is 48x40; "
                      "masks must have their image's size"),
        "rle size": ({"image": "big.png", "expressions": ["x"], "rle": masks.rle(_shape("ring"))},
                     r"the mask of image .*big.png \(48x42\) is unusable: RLE size \[40, 48\] differs from the image size"),
        "empty mask": ({"image": "p0.png", "expressions": ["x"], "mask": "empty.png"},
                       r"the mask of image .*p0.png is empty \(no object pixel\); draw the object or drop the record"),
        "empty expression": ({"image": "p0.png", "expressions": ["x", " ?! "], "polygons": ellipse},
                             r"has an empty expression \(no words\); write the expression or drop the line"),
        "duplicate": ({"image": "p0.png", "expressions": ["The ring."], "polygons": ellipse},
                      rf"expression 'the ring' also names another object of image {folder_re}/p0\.png \(line 1\), "
                      "so it is ambiguous; make each expression fit one object"),
        "bad json": ('{"image": "p0.png", "expressions": ["x"],', r"is not valid JSON \(Expecting property name "
                     r"enclosed in double quotes at column 42\); fix the line"),
        "no mask": ({"image": "p0.png", "expressions": ["x"]},
                    r'needs exactly one of "mask" \(a PNG file\), "polygons" or "rle", found none'),
    }


@pytest.mark.parametrize("case", ["missing image", "mask size", "rle size", "empty mask", "empty expression",
                                  "duplicate", "bad json", "no mask"])
def test_bad_record_is_named_by_line_and_skippable(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    folder = tmp_path / "src"
    _image(folder / "p0.png", 0)
    _image(folder / "p1.png", 1)
    bad, reason = _bad_cases(folder)[case]
    good = [{"image": "p0.png", "expressions": ["the ring"], "mask": "ring.png"},
            {"image": "p1.png", "expressions": ["the ring"], "mask": "ring.png"}]  # same words, other image: fine
    _png(folder / "ring.png", _shape("ring"))
    source = _jsonl(folder / "data.jsonl", [*good, bad, {"image": "p1.png", "expressions": ["oval"], "rle": masks.rle(_shape("ellipse"))}])
    argv = ["data", "import", str(source), "--out", str(tmp_path / "data"), "--name", "mine"]

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {source} line 3: "), err
    assert re.search(reason, err[0]), err[0]
    assert err[0].endswith("nothing was written: fix the record, or pass --skip-bad to import the others and list "
                           "the skipped ones")
    assert not (tmp_path / "data").exists()

    assert main([*argv, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    skipped_file = tmp_path / "data" / "mine" / "skipped.jsonl"
    assert warning == [f"warning: skipped 1 bad record(s) of {source}, listed in {skipped_file}; the first: "
                       f"{err[0][len('error: '):err[0].index('; nothing was written')]}"]
    skipped = [json.loads(line) for line in skipped_file.read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["line"] == 3 and skipped[0]["file"] == str(source)
    assert len(Refer(tmp_path / "data", "mine").refs) == 3


def test_csv_lines_and_coco_ids_in_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _folder_source(tmp_path / "export")
    table = tmp_path / "export" / "expressions.csv"
    lines = table.read_text().splitlines()
    assert lines[3] == "shot1__0.png,ellipse of shot 1,train"
    lines[3] = "shot1__0.png,,train"
    table.write_text("\n".join(lines) + "\n")
    assert main(["data", "import", str(tmp_path / "export"), "--out", str(tmp_path / "d"), "--name", "x"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {table} line 4: has an empty expression")

    (tmp_path / "i.json").write_text(json.dumps({"images": [], "annotations": []}))
    (tmp_path / "e.csv").write_text("annotation_id,expression\n5,the cat\n")
    assert main(["data", "import", str(tmp_path / "i.json"), "--expressions", str(tmp_path / "e.csv"),
                 "--out", str(tmp_path / "d"), "--name", "x"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'e.csv'} line 2: annotation 5 is not in ")

    (tmp_path / "e.csv").write_text("id,text\n5,the cat\n")
    with pytest.raises(LAVTUserError, match=r"e.csv line 1: the header lacks annotation_id, expression"):
        import_dataset(tmp_path / "i.json", tmp_path / "d", "x", expressions=tmp_path / "e.csv")


def test_existing_output_needs_overwrite_and_names_are_checked(tmp_path: Path) -> None:
    source, _ = _jsonl_source(tmp_path / "src", images=2)
    import_dataset(source, tmp_path / "data", "mine")
    with pytest.raises(LAVTUserError, match=r"mine already exists; choose another --name or --out, or pass --overwrite"):
        import_dataset(source, tmp_path / "data", "mine")
    import_dataset(source, tmp_path / "data", "mine", overwrite=True, link_images=True)
    assert (tmp_path / "data" / "images" / "mine" / "p0.png").is_symlink()
    for name in ("refcoco", "images", "a/b", ".hidden"):
        with pytest.raises(LAVTUserError, match="--name"):
            import_dataset(source, tmp_path / "data", name)
    import_dataset(source, tmp_path / "data", "custom", split_by="mine")
    assert len(Refer(tmp_path / "data", "custom", "mine").refs) == 8


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, _ = _jsonl_source(tmp_path / "src", images=3)
    copies, copyfile = [], shutil.copyfile

    def copy_then_fail(a, b):  # noqa: ANN001
        if copies:
            raise OSError(28, "No space left on device")
        copies.append(copyfile(a, b))

    monkeypatch.setattr(shutil, "copyfile", copy_then_fail)
    with pytest.raises(LAVTUserError, match=r"cannot write the dataset under .*: \[Errno 28\] No space left on device"):
        import_dataset(source, tmp_path / "data", "mine")
    assert copies and sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_train_and_evaluate_on_an_imported_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from helpers import make_tiny_text_encoder

    source, _ = _jsonl_source(tmp_path / "src", images=6)
    import_dataset(source, tmp_path / "data", "mine", splits="0.67,0.33")
    run = tmp_path / "run"
    code = main(["train", "--preset", "debug", "--data-root", str(tmp_path / "data"), "--dataset", "mine",
                 "--text-encoder", str(make_tiny_text_encoder(tmp_path / "bert")), "--output-dir", str(run),
                 "--epochs", "1", "--image-size", "32", "--batch-size", "2", "--no-progress", "--set", "steps_per_epoch=3"])
    assert code == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3]
    assert np.isfinite([e["loss"] for e in events if e["event"] == "train"]).all()
    assert "oIoU" in next(e for e in events if e["event"] == "epoch")["val"]
    scores = tmp_path / "val.json"
    assert main(["evaluate", "-c", str(run), "--data-root", str(tmp_path / "data"), "--dataset", "mine",
                 "--split", "val", "--no-progress", "--json", str(scores)]) == 0, capsys.readouterr().err
    result = json.loads(scores.read_text())
    assert result["dataset"] == "mine" and result["counts"] == {"images": 2, "refs": 8, "expressions": 16, "skipped_images": 0}
