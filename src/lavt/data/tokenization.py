"""Expression tokenisation exactly as the official LAVT dataset does it.

The official code runs BERT's uncased WordPiece tokenizer with special tokens
(`[CLS] ... [SEP]`), then keeps the first `max_tokens` (20) ids, so an expression longer
than 18 word pieces loses its `[SEP]`; the rest is padded with id 0 and the attention
mask is 1 on the kept ids. We reproduce that, including the missing `[SEP]`, because the
released weights were trained on it.

WordPiece itself comes from the `tokenizers` backend of transformers (`BertTokenizer` in
transformers 5 is the fast tokenizer and takes the vocabulary as `vocab=`).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import BertTokenizer

from lavt.errors import LAVTUserError
from lavt.models.text_encoder import VOCAB_NAME, default_text_encoder_dir

CONFIG_NAME = "tokenizer_config.json"
# Lone UTF-16 surrogates (from a JSON "\ud800" escape or a surrogate-escaped byte) are not
# characters and the backend cannot encode them: they become U+FFFD, which BERT's
# normaliser drops like any invalid character.
_SURROGATES = re.compile("[\ud800-\udfff]")

__all__ = ["CONFIG_NAME", "VOCAB_NAME", "ExpressionTokenizer", "default_text_encoder_dir"]


class ExpressionTokenizer:
    """BERT WordPiece tokenisation of referring expressions, cut and padded the official way.

    `vocab_file` is a WordPiece vocabulary (one token per line, e.g. bert-base-uncased's
    vocab.txt) or a folder that contains one. Ids are cut to `max_tokens` after the special
    tokens are added, padded with 0, and the attention mask marks the kept ids.
    """

    def __init__(self, vocab_file: str | Path, max_tokens: int = 20, lowercase: bool = True) -> None:
        path = Path(vocab_file)
        if path.is_dir():
            path = path / VOCAB_NAME
        if not path.is_file():
            raise LAVTUserError(
                f"tokenizer vocabulary {path} does not exist; pass the vocab.txt of a BERT "
                "uncased model (or the folder holding it)"
            )
        if int(max_tokens) < 2:
            raise LAVTUserError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
        self.vocab_file = path
        self.max_tokens = int(max_tokens)
        self.lowercase = bool(lowercase)
        try:
            # `vocab=` (not `vocab_file=`, which transformers 5 silently ignores).
            self._backend = BertTokenizer(vocab=str(path), do_lower_case=self.lowercase)
        except Exception as exc:  # noqa: BLE001 - any backend failure means a bad vocabulary
            raise LAVTUserError(f"cannot read tokenizer vocabulary {path}: {exc}") from exc
        if self._backend.unk_token_id is None or self._backend.cls_token_id is None:
            raise LAVTUserError(
                f"tokenizer vocabulary {path} lacks [UNK]/[CLS]/[SEP]; it is not a BERT vocabulary"
            )

    @property
    def vocab_size(self) -> int:
        """Number of entries in the vocabulary."""
        return int(self._backend.vocab_size)

    def token_ids(self, text: str) -> list[int]:
        """All ids of `text` with [CLS]/[SEP] and no cut: what the official code cuts to `max_tokens`."""
        return list(self._backend(_SURROGATES.sub("\ufffd", text), add_special_tokens=True)["input_ids"])

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of `text` without special tokens (for display and debugging)."""
        return list(self._backend.tokenize(_SURROGATES.sub("\ufffd", text)))

    def _cut_and_pad(self, ids: list[int]) -> tuple[list[int], list[int]]:
        ids = ids[: self.max_tokens]
        pad = self.max_tokens - len(ids)
        return ids + [0] * pad, [1] * len(ids) + [0] * pad

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """One expression -> (ids, mask), each a list of `max_tokens` ints."""
        if not isinstance(text, str):
            raise LAVTUserError(f"an expression must be a string, got {type(text).__name__}")
        return self._cut_and_pad(self.token_ids(text))

    def is_truncated(self, text: str) -> bool:
        """True when the official cut drops ids of `text` (then [SEP] is lost too)."""
        return len(self.token_ids(text)) > self.max_tokens

    def __call__(self, texts: str | list[str], return_truncated: bool = False) -> Any:
        """Expressions -> (input_ids, attention_mask), int64 tensors of shape (B, max_tokens);
        with `return_truncated`, also a list of which ones the cut shortened (from the same
        encoding: no second pass)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise LAVTUserError(f"expression {i} must be a string, got {type(text).__name__}")
        encoded = self._backend([_SURROGATES.sub("\ufffd", t) for t in texts], add_special_tokens=True)["input_ids"] if texts else []
        rows = [self._cut_and_pad(list(ids)) for ids in encoded]
        input_ids = torch.tensor([r[0] for r in rows], dtype=torch.int64).reshape(len(rows), self.max_tokens)
        attention_mask = torch.tensor([r[1] for r in rows], dtype=torch.int64).reshape(len(rows), self.max_tokens)
        if return_truncated:
            return input_ids, attention_mask, [len(ids) > self.max_tokens for ids in encoded]
        return input_ids, attention_mask

    def config(self) -> dict[str, Any]:
        """The settings written beside vocab.txt (also readable by transformers' BertTokenizer)."""
        return {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "max_tokens": self.max_tokens,
        }

    def save_pretrained(self, folder: str | Path) -> None:
        """Write vocab.txt and tokenizer_config.json into `folder` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / VOCAB_NAME
        if target.resolve() != self.vocab_file.resolve():
            shutil.copyfile(self.vocab_file, target)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2, sort_keys=True) + "\n")

    def save_tokenizer_json(self, path: str | Path) -> Path:
        """Write the WordPiece pipeline as `tokenizer.json` (the `tokenizers` library's format),
        without padding or truncation: the torch-free runtime cuts and pads the official way."""
        backend = Tokenizer.from_str(self._backend.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        path = Path(path)
        backend.save(str(path))
        return path

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_tokens: int | None = None) -> ExpressionTokenizer:
        """Load from a folder with vocab.txt and optionally tokenizer_config.json.

        Works on our own saved folders and on Hugging Face BERT folders (bert-base-uncased,
        MiniLM): `do_lower_case` is honoured, `max_tokens` defaults to the saved value or 20.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise LAVTUserError(f"tokenizer folder {folder} does not exist")
        settings: dict[str, Any] = {}
        config_path = folder / CONFIG_NAME
        if config_path.is_file():
            try:
                settings = json.loads(config_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise LAVTUserError(f"{config_path} is not valid JSON: {exc}") from exc
            if not isinstance(settings, dict):
                raise LAVTUserError(f"{config_path} must hold a JSON object")
        tokens = max_tokens if max_tokens is not None else settings.get("max_tokens", 20)
        return cls(folder / VOCAB_NAME, max_tokens=int(tokens), lowercase=bool(settings.get("do_lower_case", True)))

    def __repr__(self) -> str:
        return (
            f"ExpressionTokenizer(vocab_file={str(self.vocab_file)!r}, max_tokens={self.max_tokens}, "
            f"lowercase={self.lowercase})"
        )
