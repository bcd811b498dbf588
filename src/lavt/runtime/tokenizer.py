"""The exported tokenizer: `tokenizer.json` through the `tokenizers` library, cut and padded
the official way (see `lavt.data.tokenization`): `[CLS] ... [SEP]`, the first `max_tokens`
ids kept (a long expression loses its `[SEP]`), padded with 0, mask 1 on the kept ids.

`tokenizer.json` is the serialised backend of the torch side's tokenizer, so the ids are
the same by construction (a test compares them).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from lavt.errors import LAVTUserError

# Lone UTF-16 surrogates are not characters and the backend cannot encode them; the torch side
# (lavt.data.tokenization) turns them into U+FFFD, which BERT's normaliser drops: the same here.
_SURROGATES = re.compile("[\ud800-\udfff]")


class ExportedTokenizer:
    """`tokenizer.json` -> (input_ids, attention_mask), int64 numpy arrays (B, max_tokens)."""

    def __init__(self, path: str | Path, max_tokens: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise LAVTUserError(f"tokenizer file {path} does not exist; export the model again with `lavt export`")
        try:
            self._backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the library raises plain Exceptions for bad files
            raise LAVTUserError(f"cannot read tokenizer file {path}: {exc}") from exc
        self._backend.no_truncation()
        self._backend.no_padding()
        self.path = path
        self.max_tokens = int(max_tokens)

    @property
    def vocab_size(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def token_ids(self, text: str) -> list[int]:
        """All ids of `text` with [CLS]/[SEP] and no cut."""
        return list(self._backend.encode(_SURROGATES.sub("\ufffd", text), add_special_tokens=True).ids)

    def is_truncated(self, text: str) -> bool:
        return len(self.token_ids(text)) > self.max_tokens

    def __call__(self, texts: str | Sequence[str], return_truncated: bool = False) -> Any:
        """Expressions -> (ids, mask) int64 arrays (B, max_tokens), cut and padded the official
        way; with `return_truncated`, also which ones the cut shortened (same encoding pass)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise LAVTUserError(f"expression {i} must be a string, got {type(text).__name__}")
        ids = np.zeros((len(texts), self.max_tokens), dtype=np.int64)
        mask = np.zeros_like(ids)
        clean = [_SURROGATES.sub("\ufffd", t) for t in texts]
        truncated = []
        for row, enc in enumerate(self._backend.encode_batch(clean, add_special_tokens=True) if texts else []):
            kept = enc.ids[: self.max_tokens]
            ids[row, : len(kept)] = kept
            mask[row, : len(kept)] = 1
            truncated.append(len(enc.ids) > self.max_tokens)
        return (ids, mask, truncated) if return_truncated else (ids, mask)
