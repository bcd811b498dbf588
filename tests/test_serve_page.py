"""The page's function, its pictures (`lavt.visualize` probability maps), its examples and
`lavt serve`'s argument checks, without a browser or a server."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from lavt import visualize
from lavt.cli import main

try:
    import gradio as gr
except ImportError:  # the 'web' extra is optional
    gr = None
needs_web = pytest.mark.skipif(gr is None, reason="the 'web' extra is not installed (pip install -e '.[web]')")


def test_overlay_probabilities_blends_by_probability():
    image = Image.new("RGB", (4, 2), (100, 100, 100))
    prob = np.array([[0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]], dtype=np.float32)
    out = np.asarray(visualize.overlay_probabilities(image, [prob], [(200, 0, 0)], alpha=0.5)).astype(float)
    expected_r = 100 + 0.5 * np.clip(prob, 0, 1) * (200 - 100)
    expected_g = 100 - 0.5 * np.clip(prob, 0, 1) * 100
    np.testing.assert_allclose(out[:, :, 0], expected_r, atol=0.51)
    np.testing.assert_allclose(out[:, :, 1], expected_g, atol=0.51)
    with pytest.raises(ValueError, match="does not match"):
        visualize.overlay_probabilities(image, [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="2 colours"):
        visualize.overlay_probabilities(image, [prob], [(1, 2, 3), (4, 5, 6)])


def test_annotate_probabilities_matches_annotate_layout():
    image = Image.new("RGB", (40, 30), (50, 60, 70))
    masks = [np.zeros((30, 40), bool), np.ones((30, 40), bool)]
    labels = ["the red circle", "the blue square"]
    binary = visualize.annotate(image, masks, labels)
    soft = visualize.annotate_probabilities(image, [m.astype(np.float32) for m in masks], labels, alpha=0.45)
    assert soft.size == binary.size
    # P = 1 tints like a mask at the same alpha (inside, away from the mask's contour) ...
    assert np.asarray(soft)[120, 160].tolist() == np.asarray(binary)[120, 160].tolist() != [50, 60, 70]
    # ... and P = 0 leaves the picture untouched, like an empty mask.
    blank = visualize.annotate_probabilities(image, [np.zeros((30, 40)), np.zeros((30, 40))], labels)
    assert np.asarray(blank)[120, 160].tolist() == [50, 60, 70]
    with pytest.raises(ValueError, match="2 labels"):
        visualize.annotate_probabilities(image, [masks[0]], labels)


def test_mask_image_round_trip(tmp_path):
    mask = np.random.default_rng(0).random((7, 9)) > 0.5
    visualize.mask_image(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png").convert("L")) > 127, mask)


def test_serve_without_web_extra_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: lavt serve needs the 'web' extra (gradio not installed)")
    assert 'pip install "lavt[web]"' in err[0]


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--queue-size", "-1"], "--queue-size must be 0 or more"),
    (["--max-upload-mb", "0"], "max_upload_bytes must be at least 1"),
])
@needs_web
def test_serve_argument_errors(args, message, capsys):
    assert main(["serve", *args]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- with the model


@pytest.fixture(scope="module")
def service():
    from lavt.serve.limits import Gate, Limits
    from lavt.serve.service import SegmentService

    svc = SegmentService.load(None, device="cpu", limits=Limits(max_expressions=4))
    svc.gate = Gate(1, 0)
    yield svc
    svc.gate.close()


@pytest.fixture(scope="module")
def examples(service, tmp_path_factory):
    from lavt.serve.examples import make_examples

    return make_examples(service, tmp_path_factory.mktemp("examples"), count=2)


@needs_web
def test_examples_are_segmented_well(examples):
    assert len(examples) == 2
    for example in examples:
        assert example.image.is_file() and len(example.expressions) == 2
        assert len(set(example.expressions)) == 2
        assert min(example.ious) >= 0.8, example


@needs_web
def test_page_function(service, examples, tmp_path):
    from lavt.serve.page import PageHandler

    handler = PageHandler(service, tmp_path)
    example = examples[0]
    outputs = handler(str(example.image), example.text + "\n")
    annotated_path, probability_path, legend, rows, files = outputs
    expected = service.predictor.predict(example.image, example.expressions)
    width, height = Image.open(example.image).size
    annotated, probability = Image.open(annotated_path), Image.open(probability_path)
    assert annotated.size == probability.size and annotated.width >= 320
    # The same request again writes every picture under new names: Gradio caches outputs by
    # content, and rewriting a file in place would truncate it under a concurrent download.
    again = handler(str(example.image), example.text + "\n")
    assert {annotated_path, probability_path, *files}.isdisjoint({again[0], again[1], *again[4]})
    for i, text in enumerate(example.expressions):
        assert f"{i + 1}. {text}" in legend
        assert rows[i][0] == text and rows[i][1] == expected[i].area
        assert rows[i][2] == pytest.approx(100.0 * expected[i].area / (width * height), abs=0.01)
        got = np.asarray(Image.open(files[i]).convert("L")) > 127
        np.testing.assert_array_equal(got, expected[i].mask)
    from lavt.serve.page import legend_html

    assert "&lt;b&gt;bold&lt;/b&gt;" in legend_html(["<b>bold</b>"])


@needs_web
@pytest.mark.parametrize("image, text, message", [
    (None, "the red circle", "Upload an image first"),
    ("scene", "", "expression 1 is empty"),
    ("scene", "a\nb\nc\nd\ne", "5 expressions given, more than the server's limit of 4"),
    ("not-an-image", "the red circle", "not a readable image"),
    ("bomb", "the red circle", "9000 x 9000 = 81.0 MP, more than the server's limit of 40 MP"),
])
def test_page_errors_are_toasts(service, examples, tmp_path, image, text, message):
    from tests.test_serve_rest import _png_header_only

    from lavt.serve.page import PageHandler

    path = {"scene": str(examples[0].image), None: None}.get(image)
    if image == "not-an-image":
        path = str(tmp_path / "bad.png")
        (tmp_path / "bad.png").write_bytes(b"no picture here")
    if image == "bomb":
        path = str(tmp_path / "bomb.png")
        (tmp_path / "bomb.png").write_bytes(_png_header_only(9000, 9000))
    with pytest.raises(gr.Error, match=message):
        PageHandler(service, tmp_path)(path, text)


@needs_web
def test_large_image_preview_is_smaller_masks_are_full_size(service):
    from lavt.serve.service import DISPLAY_SIDE

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (1100, 1500, 3), dtype=np.uint8))
    result = service.segment(image, "the red circle\nthe blue square", preview=True)
    expected = service.predictor.predict(image, ["the red circle", "the blue square"])
    assert result.preview.size == (DISPLAY_SIDE, round(1100 * DISPLAY_SIDE / 1500))
    for mask, small, prob, pred in zip(result.masks, result.preview_masks, result.preview_probabilities, expected):
        np.testing.assert_array_equal(mask, pred.mask)
        assert small.shape == prob.shape == (result.preview.height, result.preview.width)
        # The preview is the same prediction at a lower resolution.
        assert abs(small.mean() - pred.mask.mean()) < 0.01


@needs_web
def test_page_busy_is_a_toast(service, examples, tmp_path):
    from lavt.serve.page import PageHandler

    service.gate.enter()  # concurrency 1, queue 0
    try:
        with pytest.raises(gr.Error, match="busy"):
            PageHandler(service, tmp_path)(str(examples[0].image), "the red circle")
    finally:
        service.gate.leave()


@needs_web
def test_page_has_the_segment_api(service, examples, tmp_path):
    from lavt.serve.page import build_page

    page = build_page(service, examples, tmp_path)
    named = {fn.api_name: fn for fn in page.fns.values() if fn.api_visibility == "public"}
    assert set(named) == {"segment"}
    assert [c.label for c in named["segment"].inputs] == ["Image", "Expressions"]
    assert [c.label for c in named["segment"].outputs] == [
        "Result", "Result (probability)", "Legend", "Per expression", "Masks (PNG)"]

    from lavt.serve.app import create_app

    app = create_app(service, page)
    assert page.max_file_size == service.limits.max_upload_bytes  # Gradio refuses larger uploads
    mounted = [i for i, r in enumerate(app.routes) if type(r).__name__ == "Mount"]
    rest = [i for i, r in enumerate(app.routes) if getattr(r, "path", None) == "/v1/segment"]
    assert len(mounted) == 1 and rest and rest[0] < mounted[0]  # REST routes are matched before the page


@needs_web
def test_page_warns_when_an_expression_is_cut(service, examples, tmp_path):
    from lavt.serve.page import PageHandler

    long = "the red circle " + " ".join(["that is far to the left of all the others"] * 5)
    with pytest.warns(UserWarning, match="expression 2 is longer than 20 tokens and was cut"):
        outputs = PageHandler(service, tmp_path)(str(examples[0].image), f"the blue square\n{long}")
    # the shipped model may answer "no such object" (its no-target head), which the row then says
    assert [row[0].removesuffix(" (no such object)") for row in outputs[3]] == ["the blue square", long]
