"""The catalogue of bad inputs, part 3: referring datasets (`lavt data info`, `lavt evaluate`).

Same promise as test_bad_inputs.py: exit code 2, one `error:` line with the row's key phrase,
no traceback, nothing written (no results JSON), no input changed; the reader's API
(`Refer`, `ReferDataset`) raises `LAVTUserError` with the same phrase. Problems found when the
files are opened go through `lavt data info`; those found when a record is used (a mask that
cannot be decoded, an image file that is missing) go through `lavt evaluate`, once with a
DataLoader worker process to show that a worker's error still arrives as one line.
"""
from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import build_refer_dataset, marker_payloads, one_error_line, snapshot, tiny_model_folder
from lavt.cli import main
from lavt.data import ReferDataset
from lavt.data.refer import Refer
from lavt.errors import LAVTUserError
from lavt.loading import default_tokenizer


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_data")
    return {"model": tiny_model_folder(root / "model", image_size=32), "data": build_refer_dataset(root / "data")}


# ---------------------------------------------------------------------- datasets to break
def data(d: Path, e: dict, refs: Callable[[list], Any] | None = None, instances: Callable[[dict], Any] | None = None) -> Path:
    """A copy of the hand-made refcoco fixture, its refs and instances changed in place."""
    root = shutil.copytree(e["data"], d / "data")
    if refs is not None:
        path = root / "refcoco" / "refs(unc).p"
        loaded = pickle.loads(path.read_bytes())
        changed = refs(loaded)  # a new list or mapping replaces the refs; None (changed in place) or a popped value does not
        loaded = changed if isinstance(changed, (list, dict)) else loaded
        path.write_bytes(pickle.dumps(loaded, protocol=2))
    if instances is not None:
        path = root / "refcoco" / "instances.json"
        loaded = json.loads(path.read_text())
        instances(loaded)
        path.write_text(json.dumps(loaded))
    return root


def with_file(root: Path, name: str, content: bytes | None) -> Path:
    """`root` with `refcoco/<name>` replaced by `content` (None: removed)."""
    path = root / "refcoco" / name
    path.unlink()
    if content is not None:
        path.write_bytes(content)
    return root


def segmentation(ann_id: int, value: Any) -> Callable[[dict], None]:
    return lambda inst: next(a for a in inst["annotations"] if a["id"] == ann_id).update(segmentation=value)


def remove_image(root: Path, image_id: int) -> Path:
    (root / "images/mscoco/images/train2014" / f"COCO_train2014_{image_id:012d}.jpg").unlink()
    return root


def truncate_image(root: Path, image_id: int) -> Path:
    path = root / "images/mscoco/images/train2014" / f"COCO_train2014_{image_id:012d}.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return root


@dataclass
class Case:
    """`root(d, env)` makes the data root in the case folder `d`. `via` is the command that
    meets the problem: 'info' (`lavt data info`, the files are opened) or 'evaluate' (the
    records are used); `args` are extra arguments. `api(root)` is the reader's call."""

    name: str
    phrase: str
    root: Callable[[Path, dict], Path]
    via: str = "info"
    args: list[str] = field(default_factory=list)
    api: Callable[[Path], Any] = lambda root: Refer(root, "refcoco", "unc")


def _val_masks(root: Path, split: str = "val") -> None:
    ds = ReferDataset(root, "refcoco", "unc", split, tokenizer=default_tokenizer(), image_size=32, mode="eval")
    for i in range(len(ds)):
        ds[i]


CASES = [
    Case("data root: missing", r"data root .*nowhere does not exist", lambda d, e: d / "nowhere"),
    Case("dataset name: unknown (lists what exists)",
         r"dataset folder .*refcocoo does not exist \(found: refcoco\); check --data-root and --dataset",
         lambda d, e: data(d, e), args=["--dataset", "refcocoo"], api=lambda r: Refer(r, "refcocoo", "unc")),
    Case("partition: unknown (lists what exists)", r"refs file .*refs\(umd\)\.p does not exist \(found: refs\(unc\)\.p\); check --split-by",
         lambda d, e: data(d, e), args=["--split-by", "umd"], api=lambda r: Refer(r, "refcoco", "umd")),
    Case("refs(unc).p: missing", r"refs file .*refs\(unc\)\.p does not exist \(found: none\)",
         lambda d, e: with_file(data(d, e), "refs(unc).p", None)),
    Case("instances.json: missing", r"annotation file .*instances\.json does not exist",
         lambda d, e: with_file(data(d, e), "instances.json", None)),
    Case("instances.json: truncated", r"cannot read annotation file .*instances\.json: not valid JSON .*re-download or regenerate it",
         lambda d, e: with_file(data(d, e), "instances.json", b'{"images": [{"id": 1, "file_na')),
    Case("instances.json: not JSON (an HTML error page)", r"instances\.json: not valid JSON",
         lambda d, e: with_file(data(d, e), "instances.json", b"<html><body>403 Forbidden</body></html>")),
    Case("instances.json: not an object", r"instances\.json must hold a JSON object",
         lambda d, e: with_file(data(d, e), "instances.json", b"[1, 2, 3]")),
    Case("refs(unc).p: truncated", r"cannot read refs file .*refs\(unc\)\.p: .*damaged or not a refs pickle",
         lambda d, e: with_file(data(d, e), "refs(unc).p", (e["data"] / "refcoco" / "refs(unc).p").read_bytes()[:300])),
    Case("refs(unc).p: not a list", r"refs file .*refs\(unc\)\.p must hold a list of refs, got dict",
         lambda d, e: data(d, e, refs=lambda refs: {"refs": refs})),
    Case("refs(unc).p: a list of strings, not dicts", r"refs\(unc\)\.p: record 0 is a str, not a dict",
         lambda d, e: data(d, e, refs=lambda refs: [str(r) for r in refs])),
    Case("ref: a required field missing", r"refs\(unc\)\.p: record 1 \(ref_id 2\) lacks image_id",
         lambda d, e: data(d, e, refs=lambda refs: refs[1].pop("image_id"))),
    Case("ref: points to a missing annotation", r"ref_id 3 points to ann_id 999, which is not in .*instances\.json",
         lambda d, e: data(d, e, refs=lambda refs: refs[2].update(ann_id=999))),
    Case("ref: points to a missing image record", r"ref_id 4 points to image_id 2, which is not in .*instances\.json",
         lambda d, e: data(d, e, instances=lambda inst: inst.update(images=inst["images"][:1]))),
    Case("ref: an empty expression", r"ref_id 2, sent_id 5 has an empty expression \(' '\); fix or drop that sentence",
         lambda d, e: data(d, e, refs=lambda refs: refs[1]["sentences"][1].update(raw=" "))),
    Case("split with zero expressions", r"refs\(unc\)\.p: ref_id 3 has no sentences",
         lambda d, e: data(d, e, refs=lambda refs: refs[2].update(sentences=[], sent_ids=[]))),
    Case("split: unknown (lists what exists)", r"split 'tset' has no refs in .*\(splits present: train, val, testA, testB\)",
         lambda d, e: data(d, e), "evaluate", ["--split", "tset"], lambda r: Refer(r, "refcoco", "unc").ref_ids("tset")),
    Case("image file: missing",
         r"image .*COCO_train2014_000000000001\.jpg \(image_id 1, ref_id 3, split val\) does not exist; put the images",
         lambda d, e: remove_image(data(d, e), 1), "evaluate", api=_val_masks),
    Case("image file: truncated", r"image .*COCO_train2014_000000000001\.jpg \(image_id 1\) cannot be decoded .*corrupt or truncated",
         lambda d, e: truncate_image(data(d, e), 1),
         "evaluate", api=_val_masks),
    Case("segmentation: empty", r"annotation 103 \(ref_id 3\) has an unusable segmentation: segmentation is empty",
         lambda d, e: data(d, e, instances=segmentation(103, [])), "evaluate", api=_val_masks),
    Case("segmentation: polygon of 2 points (in a DataLoader worker)",
         r"annotation 103 \(ref_id 3\) has an unusable segmentation: polygon 0 has 4 coordinates",
         lambda d, e: data(d, e, instances=segmentation(103, [[1, 1, 5, 5]])), "evaluate", ["--workers", "1"], _val_masks),
    Case("segmentation: RLE runs of the wrong size", r"annotation 103 .*RLE runs cover 10 pixels, not 30x40",
         lambda d, e: data(d, e, instances=segmentation(103, {"size": [30, 40], "counts": [5, 5]})), "evaluate", api=_val_masks),
    Case("segmentation: RLE of another image size", r"annotation 201 .*RLE size \[10, 10\] differs from the image size \[48, 32\]",
         lambda d, e: data(d, e, instances=segmentation(201, {"size": [10, 10], "counts": "52"})), "evaluate", ["--split", "testA"],
         lambda r: _val_masks(r, "testA")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused(case: Case, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = case.root(tmp_path, env)
    if case.via == "info":
        argv = ["data", "info", "--data-root", str(root), "--dataset", "refcoco", *case.args]
    else:
        argv = ["evaluate", "-c", str(env["model"]), "--data-root", str(root), "--split", "val", "--workers", "0",
                "--device", "cpu", "--no-progress", "--json", str(tmp_path / "results.json"), *case.args]
    before = snapshot(tmp_path, env["model"])
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, case.phrase)
    assert snapshot(tmp_path, env["model"]) == before
    with pytest.raises(LAVTUserError, match=case.phrase):
        case.api(root)


def test_malicious_refs_file_is_refused_before_it_runs(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`lavt data info` and `Refer` on a refs file whose unpickling would create a marker file."""
    for payload, runner in marker_payloads(tmp_path / "payload_ran").items():
        (tmp_path / payload).mkdir()
        root = with_file(data(tmp_path / payload, env), "refs(unc).p", pickle.dumps([{"ref_id": runner}], protocol=2))
        imported = "posix.system" if payload == "os.system" else "io.open"  # how pickle names os.system and builtins.open
        phrase = rf"cannot read refs file .*refs\(unc\)\.p: UnpicklingError: refuses to load {imported}: a refs file holds plain data only"
        assert main(["data", "info", "--data-root", str(root), "--dataset", "refcoco"]) == 2
        one_error_line(capsys.readouterr().err, phrase)
        with pytest.raises(LAVTUserError, match=phrase):
            Refer(root, "refcoco", "unc")
        assert not (tmp_path / "payload_ran").exists()
        pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())  # a real attack: plain pickle runs it
        assert (tmp_path / "payload_ran").exists()
        (tmp_path / "payload_ran").unlink()


def test_results_that_cannot_be_written_are_refused_before_evaluating(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for flag, target, phrase in [
        ("--json", blocker / "r.json", r"json .*file/r\.json cannot be created: .*file is a file; choose another path"),
        ("--per-expression", tmp_path, r"per_expression .* is a folder, not a file; choose another path"),
        ("--overlays", blocker, r"overlays .*file is a file, not a folder; choose another path"),
    ]:
        before = snapshot(tmp_path)
        argv = ["evaluate", "-c", str(env["model"]), "--data-root", str(env["data"]), "--workers", "0", flag, str(target)]
        assert main(argv) == 2
        one_error_line(capsys.readouterr().err, phrase)
        assert snapshot(tmp_path) == before


def test_a_skipped_unreadable_image_is_one_warning_line(env: dict, tmp_path: Path) -> None:
    root = truncate_image(data(tmp_path, env, refs=lambda refs: refs[4].update(split="train")), 2)  # train: images 1 and 2
    with pytest.warns(UserWarning) as caught:
        ds = ReferDataset(root, "refcoco", "unc", "train", tokenizer=default_tokenizer(), image_size=32, skip_unreadable=True)
    assert len(caught) == 1 and ds.skipped == 1
    message = str(caught[0].message)
    assert "\n" not in message and message.startswith("refcoco/train: skipped 1 unreadable image(s) and their refs: ")
    assert "COCO_train2014_000000000002.jpg" in message and ds.num_images == 1
