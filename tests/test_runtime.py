"""lavt.runtime without torch: it runs in a process where `import torch` fails, its tokenizer
gives the torch side's ids, its upsampling is torch's."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import REPO
from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
from lavt.errors import LAVTUserError
from lavt.inference import Predictor
from lavt.runtime import ExportedTokenizer, OnnxPredictor, is_export_folder, read_export_config
from lavt.runtime.prediction import resize_bilinear
from onnx_helpers import TOKENS, tiny_model_dir

EXPRESSIONS = [
    "the man in the red shirt on the left",
    "The LEFTMOST Square!",
    "a",
    "   ",
    "",
    "Café naïve résumé, façade",
    "東京タワー の 左",
    "emoji 😀 and ÆØÅ ß",
    "left-most (red) thing; 2nd from the top... isn't it?",
    "tabs\tand\nnew lines",
    " ".join(["a very long expression that keeps going"] * 6),
    "unaffable unbelievable antidisestablishmentarianism",
    "a lone surrogate \ud800 in the middle",
]

BLOCKER = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""

SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
try:
    import torch
except ImportError:
    blocked = True
else:
    blocked = False
from lavt.runtime import OnnxPredictor
folder, image, out = sys.argv[1:4]
results = OnnxPredictor(folder).predict(Image.open(image), ["the red square", "the left one"])
np.savez(out, masks=np.stack([r.mask for r in results]), probs=np.stack([r.probability for r in results]))
print(json.dumps({"blocked": blocked, "torch_loaded": any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)}))
"""


def test_predicts_in_a_process_where_torch_cannot_be_imported(onnx_root, exported, tmp_path):
    from PIL import Image

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "run.py").write_text(SCRIPT)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (57, 71, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "scene.png")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO / "src")]))
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(exported), str(tmp_path / "scene.png"), str(tmp_path / "out.npz")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"blocked": True, "torch_loaded": False}
    got = np.load(tmp_path / "out.npz")
    ref = Predictor.from_pretrained(tiny_model_dir(onnx_root)).predict(arr, ["the red square", "the left one"])
    np.testing.assert_allclose(got["probs"], np.stack([r.probability for r in ref]), atol=2e-5, rtol=0)
    assert (got["masks"] != np.stack([r.mask for r in ref])).mean() < 1e-3


@pytest.mark.parametrize("tokens", [TOKENS, 20])
def test_tokenizer_ids_equal_the_torch_side(exported, tokens):
    ours = ExportedTokenizer(exported / "tokenizer.json", max_tokens=tokens)
    ref = ExpressionTokenizer(default_text_encoder_dir(), max_tokens=tokens)
    ids, mask = ours(EXPRESSIONS)
    ref_ids, ref_mask = ref(EXPRESSIONS)
    assert ids.dtype == np.int64 and ids.shape == (len(EXPRESSIONS), tokens)
    np.testing.assert_array_equal(ids, ref_ids.numpy())
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    assert [ours.is_truncated(t) for t in EXPRESSIONS] == [ref.is_truncated(t) for t in EXPRESSIONS]
    assert any(ours.is_truncated(t) for t in EXPRESSIONS)  # the long one loses its [SEP], as officially
    # the flags the predictors warn from come out of the same encoding pass as the ids
    flags = [ref.is_truncated(t) for t in EXPRESSIONS]
    assert ours(EXPRESSIONS, return_truncated=True)[2] == ref(EXPRESSIONS, return_truncated=True)[2] == flags
    assert ours.vocab_size == ref.vocab_size == 30522


@pytest.mark.parametrize("src,dst", [((12, 12), (61, 83)), ((48, 48), (20, 30)), ((5, 7), (1, 9)), ((8, 8), (8, 8))])
def test_upsampling_equals_torch_bilinear_align_corners(src, dst):
    x = np.random.default_rng(0).standard_normal((3, 2, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=True).numpy()
    np.testing.assert_allclose(resize_bilinear(x, dst), ref, atol=2e-6, rtol=0)


def test_predictor_checks_and_folder_errors(exported, tmp_path):
    p = OnnxPredictor(exported)
    with pytest.raises(LAVTUserError, match="expression 2 is empty"):
        p.predict(np.zeros((20, 20, 3), np.uint8), ["the cat", "  "])
    with pytest.warns(UserWarning, match=f"longer than {TOKENS} tokens and was cut"):
        p.predict(np.zeros((20, 20, 3), np.uint8), [EXPRESSIONS[10]])
    assert is_export_folder(exported) and not is_export_folder(tmp_path)
    with pytest.raises(LAVTUserError, match="is not an exported LAVT folder"):
        read_export_config(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    cfg = json.loads((exported / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LAVTUserError, match=r"lacks model.onnx \(float32 full graph"):
        read_export_config(broken)
    (broken / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(LAVTUserError, match="format_version 99"):
        read_export_config(broken)
