"""`lavt data view`: the contact sheet and the HTML page of synthref and of an imported set, the
mask drawn exactly where the object is, the sample draw, and the grid layout."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_synth
from lavt import visualize
from lavt.cli import main
from lavt.data.importer import import_dataset, masks
from lavt.data.refer import Refer
from lavt.data.view import choose_refs, draw_sample
from lavt.errors import LAVTUserError

GREY = (90, 90, 90)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth(tmp_path_factory.mktemp("view") / "data")


def test_sheet_and_page_of_synthref(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sheet, page = tmp_path / "sheet.png", tmp_path / "page"
    code = main(["data", "view", "--data-root", str(synth_root), "--dataset", "synthref", "--split", "train",
                 "--num", "5", "--columns", "2", "--tile", "64", "--out", str(sheet), "--html", str(page)])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines() == [f"wrote {sheet}", f"wrote {page / 'index.html'}"]
    with Image.open(sheet) as picture:
        assert picture.width == 2 * 64 + 3 * 6 and picture.height > 3 * (64 + 6)

    refer = Refer(synth_root, "synthref")
    chosen = choose_refs(refer, "train", 5, seed=0)
    text = (page / "index.html").read_text()
    assert text.count("<figure>") == 5
    for ref_id in chosen:
        ref = refer.refs[ref_id]
        assert f"train | ref {ref_id} | image {ref['image_id']} | ann {ref['ann_id']}" in text
        for sentence in ref["sentences"]:
            assert f"<li>{sentence['raw']}</li>" in text
    pictures = re.findall(r'<img src="([^"]+)"', text)
    assert len(pictures) == 5 and all((page / p).is_file() for p in pictures)


def test_mask_is_drawn_exactly_on_the_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 40), GREY).save(src / "grey.png")
    mask = np.zeros((40, 40), bool)
    mask[5:30, 12:20] = True
    record = {"image": "grey.png", "expressions": ["the <box> & co"], "rle": masks.rle(mask)}
    (src / "data.jsonl").write_text(json.dumps(record) + "\n")
    import_dataset(src / "data.jsonl", tmp_path / "data", "grey", splits="train=1")
    refer = Refer(tmp_path / "data", "grey")
    sample = draw_sample(refer, 1, size=40)
    picture = np.asarray(sample.picture)
    dimmed = picture[0, 0]
    assert tuple(dimmed) != GREY and (picture[~mask] == dimmed).all()  # outside: darkened, nothing drawn
    assert (picture[mask] != dimmed).any(axis=1).all()  # inside: every pixel of the object marked
    assert sample.expressions == ["the <box> & co"] and sample.split == "train"

    page = tmp_path / "page"
    monkeypatch.chdir(tmp_path)  # a sheet written by default to a relative path would land here
    assert main(["data", "view", "--data-root", str(tmp_path / "data"), "--dataset", "grey", "--html", str(page)]) == 0
    assert "<li>the &lt;box&gt; &amp; co</li>" in (page / "index.html").read_text()
    assert not (tmp_path / "sheet.png").exists()
    # --html alone writes the page and its pictures, and no sheet anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "page", "src"]
    assert sorted(p.relative_to(page).as_posix() for p in page.rglob("*")) == ["index.html", "samples", "samples/ref_1.png"]


def test_missing_image_is_a_marked_tile_and_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (40, 30), GREY).save(src / "a.png")
    (src / "data.jsonl").write_text(json.dumps({"image": "a.png", "expressions": ["it"], "polygons": [[2, 2, 9, 2, 9, 9]]}))
    import_dataset(src / "data.jsonl", tmp_path / "data", "gone", splits="train=1")
    missing = tmp_path / "data" / "images" / "gone" / "a.png"
    missing.unlink()
    sheet = tmp_path / "sheet.png"
    assert main(["data", "view", "--data-root", str(tmp_path / "data"), "--dataset", "gone", "--out", str(sheet)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: ref 1: image {missing} (image_id 1) does not exist") and sheet.is_file()


def test_generalized_refs_show_their_targets(synth_root: Path, tmp_path: Path) -> None:
    from lavt.data.grefcoco import open_refer
    from lavt.data.synthref.language_generalized import generate_generalized

    if not (synth_root / "synthgref").is_dir():
        generate_generalized(synth_root)
    refer = open_refer(synth_root, "synthgref")
    none = next(r for r in refer.refs if refer.no_target(r))
    multi = next(r for r in refer.refs if refer.num_targets(r) > 1)
    empty, several = draw_sample(refer, none, 48), draw_sample(refer, multi, 48)
    assert empty.ann_ids == [] and empty.label().endswith(" | no target")
    assert several.ann_ids == refer.target_ann_ids(multi) and several.label().endswith(f" | {len(several.ann_ids)} targets")
    def outlined(sample) -> int:  # pixels of the mask's contour, drawn in the ground-truth colour
        return int((np.asarray(sample.picture) == np.array(visualize.GT_COLOUR)).all(axis=2).sum())

    assert outlined(empty) == 0 and outlined(several) > 0
    page = tmp_path / "page"
    assert main(["data", "view", "--data-root", str(synth_root), "--dataset", "synthgref", "--num", "40",
                 "--html", str(page)]) == 0
    text = (page / "index.html").read_text()
    assert " | no target</small>" in text and re.search(r" \| \d targets \| ann \d+, \d+", text)


def test_sample_draw(synth_root: Path) -> None:
    refer = Refer(synth_root, "synthref")
    val = refer.ref_ids("val")
    assert choose_refs(refer, "val", len(val) + 5) == val
    a, b = choose_refs(refer, None, 6, seed=0), choose_refs(refer, None, 6, seed=1)
    assert a == choose_refs(refer, None, 6, seed=0) and a != b
    order = list(refer.refs)
    assert a == sorted(a, key=order.index) and len(set(a)) == 6
    with pytest.raises(LAVTUserError, match="--num must be at least 1"):
        choose_refs(refer, None, 0)


def test_view_needs_an_output(synth_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "view", "--data-root", str(synth_root), "--dataset", "synthref"]) == 2
    assert capsys.readouterr().err == "error: nothing to write: pass --out sheet.png, --html DIR, or both\n"


def test_grid_places_panels_in_rows() -> None:
    panels = [Image.new("RGB", (10, h), c) for h, c in ((5, (255, 0, 0)), (8, (0, 255, 0)), (3, (0, 0, 255)))]
    sheet = np.asarray(visualize.grid(panels, columns=2, gap=2, background=(0, 0, 0)))
    assert sheet.shape == (2 + 8 + 2 + 3 + 2, 2 + 10 + 2 + 10 + 2, 3)
    assert tuple(sheet[2, 2]) == (255, 0, 0) and tuple(sheet[2, 14]) == (0, 255, 0)
    assert tuple(sheet[12, 2]) == (0, 0, 255) and tuple(sheet[7, 2]) == (0, 0, 0)  # row 2 starts below the taller panel
