"""REST API of `lavt serve` in-process: the JSON schema, masks equal to `Predictor.predict`,
and every limit answered as a 4xx `{"error": ...}` (503 when busy) while the server keeps serving."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'web' extra is not installed (pip install -e '.[web]')")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from lavt.data import Refer, generate_synthref  # noqa: E402
from lavt.demo import shipped_model_dir  # noqa: E402
from lavt.inference import Predictor  # noqa: E402
from lavt.serve.app import create_app  # noqa: E402
from lavt.serve.limits import Gate, Limits, RequestRejected, ServerBusy, split_expressions  # noqa: E402
from lavt.serve.service import SegmentService  # noqa: E402

# pycocotools' decoder trips numpy 2's copy-keyword deprecation on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_pretrained(shipped_model_dir())


@pytest.fixture(scope="module")
def scene_and_expressions(tmp_path_factory):
    """A generated scene and three of its expressions (of different objects)."""
    root = tmp_path_factory.mktemp("scenes")
    generate_synthref(root, seed=11, num_images=4, image_size=(128, 192), overwrite=True)
    refer = Refer(root, "synthref")
    for image_id, ref_ids in refer.image_refs.items():
        if len(ref_ids) >= 3:
            return refer.image_path(image_id), [refer.refs[r]["sentences"][0]["sent"] for r in ref_ids[:3]]
    raise AssertionError("no scene with three referred objects")


@pytest.fixture(scope="module")
def scene(scene_and_expressions):
    return scene_and_expressions[0]


@pytest.fixture(scope="module")
def service(predictor):
    return SegmentService(predictor, str(shipped_model_dir()), Limits(), Gate(1, 4))


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(scope="module")
def small_client(predictor):
    """A server with small limits, to test them without huge uploads."""
    limits = Limits(max_upload_bytes=50_000, max_pixels=40_000, max_expressions=3)
    with TestClient(create_app(SegmentService(predictor, "small", limits, Gate(1, 0)))) as c:
        yield c


def _post(client, image_bytes, expressions, **data):
    form = {"expressions": expressions, **data}
    return client.post("/v1/segment", files={"image": ("scene.jpg", image_bytes, "image/jpeg")}, data=form)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes: a bomb that
    must be refused from its header, never decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_healthz_and_model(client, predictor):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model_loaded"] is True and health["device"] == "cpu"
    info = client.get("/v1/model").json()
    assert info["name"] == "demo_model" and info["image_size"] == 128 and info["precision"] == "fp32"
    assert info["config"]["depths"] == [1, 1, 4, 1] and "Swin" in info["architecture"]
    assert info["limits"] == {"max_upload_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000, "max_expressions": 16,
                              "concurrency": 1, "queue_size": 4}


def test_schema_and_rle_equal_predictor(client, predictor, scene_and_expressions):
    scene, EXPRESSIONS = scene_and_expressions
    r = _post(client, scene.read_bytes(), "\n".join(EXPRESSIONS))
    assert r.status_code == 200, r.text
    body = r.json()
    width, height = Image.open(scene).size
    assert (body["width"], body["height"], body["model"]) == (width, height, "demo_model")
    assert [x["expression"] for x in body["results"]] == EXPRESSIONS
    expected = predictor.predict(scene, EXPRESSIONS)
    for entry, pred in zip(body["results"], expected):
        # the shipped demo model decides no-target expressions (its head): the answer says so
        assert set(entry) == {"expression", "rle", "area", "score", "no_target", "no_target_probability"}
        assert entry["no_target"] is pred.no_target is False
        assert entry["no_target_probability"] == pytest.approx(pred.no_target_probability, abs=1e-6)
        assert entry["rle"]["size"] == [height, width] and isinstance(entry["rle"]["counts"], str)
        decoded = mask_utils.decode({"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), pred.mask)
        assert entry["area"] == pred.area
        score = float(pred.probability[pred.mask].mean()) if pred.area else 0.0
        assert entry["score"] == pytest.approx(score, abs=1e-5)
        if pred.area:
            assert 0.5 <= entry["score"] <= 1.0
    assert all(x["area"] > 0 for x in body["results"])


def test_repeated_field_and_png_format(client, predictor, scene_and_expressions):
    scene, EXPRESSIONS = scene_and_expressions
    r = client.post("/v1/segment", files=[("image", ("s.jpg", scene.read_bytes(), "image/jpeg"))],
                    data={"expressions": EXPRESSIONS[:2], "format": "png"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["expression"] for x in results] == EXPRESSIONS[:2]
    for entry, pred in zip(results, predictor.predict(scene, EXPRESSIONS[:2])):
        assert "rle" not in entry
        png = Image.open(io.BytesIO(base64.b64decode(entry["png"])))
        np.testing.assert_array_equal(np.asarray(png.convert("L")) > 127, pred.mask)


def test_long_expression_is_cut_with_a_warning(client, scene):
    long = "the red circle " + " ".join(["that is very far on the left of everything"] * 6)
    r = _post(client, scene.read_bytes(), f"the blue square\n{long}")
    assert r.status_code == 200
    body = r.json()
    assert len(body["results"]) == 2 and body["results"][1]["expression"] == long
    assert len(body["warnings"]) == 1 and "expression 2 is longer than 20 tokens and was cut" in body["warnings"][0]


@pytest.mark.parametrize(
    "expressions, message",
    [
        ("", "expression 1 is empty"),
        ("   \n  ", "expression 1 is empty"),
        ("the red circle\n\nthe blue square", "expression 2 is empty"),
        (["the red circle", ""], "expression 2 is empty"),
        ("\n".join(["the red circle"] * 17), "17 expressions given, more than the server's limit of 16"),
    ],
)
def test_bad_expressions(client, scene, expressions, message):
    r = _post(client, scene.read_bytes(), expressions)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_bad_requests_are_4xx_json(client, scene):
    ok = scene.read_bytes()
    cases = [
        (client.post("/v1/segment", files={"expressions": (None, "x")}), 400, "no image file"),
        (client.post("/v1/segment", data={"expressions": "x"}), 415, "multipart/form-data"),
        (client.post("/v1/segment", files={"image": ("s.jpg", ok)}), 400, "no 'expressions' field"),
        (_post(client, ok, "the red circle", format="svg"), 400, "format must be 'rle' or 'png'"),
        (_post(client, ok, "the red circle", colour="red"), 400, "unknown form fields ['colour']"),
        (client.post("/v1/segment", json={"expressions": "x"}), 415, "multipart/form-data"),
        (_post(client, b"this is not an image", "the red circle"), 400, "not a readable image"),
        (_post(client, ok[: len(ok) // 2], "the red circle"), 400, "cannot be decoded"),
        (client.post("/v1/segment", files=[("image", ("a.jpg", ok)), ("image", ("b.jpg", ok))],
                     data={"expressions": "x"}), 400, "form data cannot be read"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["error"]
    assert _post(client, ok, "the red circle").status_code == 200  # still serving


def test_decompression_bomb_refused_from_its_header(client):
    r = _post(client, _png_header_only(10_000, 5_000), "the red circle")
    assert r.status_code == 413
    assert "10000 x 5000 = 50.0 MP, more than the server's limit of 40 MP" in r.json()["error"]


def test_small_limits(small_client, scene):
    big = Image.new("RGB", (250, 200), (120, 50, 50))  # 50,000 px > 40,000
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    r = _post(small_client, buffer.getvalue(), "the red circle")
    assert r.status_code == 413 and "250 x 200" in r.json()["error"]

    r = _post(small_client, scene.read_bytes(), "a\nb\nc\nd")
    assert r.status_code == 400 and "limit of 3 per request" in r.json()["error"]

    noise = np.random.default_rng(0).integers(0, 255, (180, 180, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")  # ~97 KB > 50 KB
    r = _post(small_client, buffer.getvalue(), "the red circle")  # declared Content-Length
    assert r.status_code == 413 and "more than the server's limit" in r.json()["error"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        body = buffer.getvalue()
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"expressions\"\r\n\r\nthe red circle\r\n"
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"n.png\"\r\n\r\n"
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]
        yield b"\r\n--xyz--\r\n"

    r = small_client.post("/v1/segment", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "more than the server's limit" in r.json()["error"]
    assert _post(small_client, scene.read_bytes(), "the red circle").status_code == 200


def test_full_queue_answers_busy(small_client, scene):
    gate = small_client.app.state.service.gate
    gate.enter()  # concurrency 1, queue 0: the one slot is taken
    try:
        r = _post(small_client, scene.read_bytes(), "the red circle")
        assert r.status_code == 503 and "busy" in r.json()["error"] and r.headers["retry-after"] == "1"
    finally:
        gate.leave()
    assert _post(small_client, scene.read_bytes(), "the red circle").status_code == 200


def test_gate_counts_running_and_waiting():
    gate = Gate(concurrency=2, queue_size=1)
    for _ in range(3):
        gate.enter()
    with pytest.raises(ServerBusy, match="2 running, 1 waiting"):
        gate.enter()
    gate.leave()
    gate.enter()
    assert gate.admitted == 3
    assert gate.run(lambda a, b: a + b, 2, 3) == 5
    gate.close()
    with pytest.raises(Exception, match="at least 1"):
        Gate(concurrency=0)


def test_split_expressions():
    limits = Limits(max_expressions=3)
    assert split_expressions("a\n b \n", limits) == ["a", "b"]
    assert split_expressions(["a", "b\nc"], limits) == ["a", "b", "c"]
    with pytest.raises(RequestRejected, match="limit of 3"):
        split_expressions(["a", "b\nc\nd"], limits)
    with pytest.raises(RequestRejected, match="expression 2 is empty"):
        split_expressions(["a", " "], limits)
