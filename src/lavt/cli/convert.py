"""`lavt convert OFFICIAL.pth OUT_DIR`: an official checkpoint -> a self-contained model folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from lavt.errors import LAVTUserError


def parse_heads(text: str | None) -> tuple[int, ...] | None:
    """'1-2-2-4' (the official --mha format) -> (1, 2, 2, 4)."""
    if text is None:
        return None
    try:
        heads = tuple(int(a) for a in text.split("-"))
    except ValueError:
        heads = ()
    if len(heads) != 4 or min(heads) < 1:
        raise LAVTUserError(f"--pwam-heads must be four positive integers like 1-1-1-1, got {text!r}")
    return heads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official LAVT checkpoint into a model folder (config.json + model.safetensors)",
        description="Reads a released LAVT/LAVT-one checkpoint (or a bare state_dict) without running "
        "pickled code, infers the architecture from its shapes and writes a folder that "
        "`lavt predict`, `lavt evaluate` and LAVT.from_pretrained load.",
    )
    p.add_argument("checkpoint", type=Path, help="official .pth file")
    p.add_argument("out_dir", type=Path, help="folder to write")
    p.add_argument(
        "--pwam-heads", default=None, help="PWAM heads per stage, e.g. 1-1-1-1 (default: the checkpoint's args.mha, else 1-1-1-1)"
    )
    p.add_argument(
        "--vocab", type=Path, default=None, help="BERT uncased vocab.txt (default: the packaged one, identical to bert-base-uncased's)"
    )
    p.add_argument("--image-size", type=int, default=480, help="input side the model was trained at (official: 480)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so `lavt --help` does not load torch and transformers.
    from lavt.data.tokenization import ExpressionTokenizer
    from lavt.engine.checkpoint import save_model_folder
    from lavt.engine.config import check_writable
    from lavt.models import default_text_encoder_dir, load_official

    heads = parse_heads(args.pwam_heads)
    check_writable("out_dir", args.out_dir, folder=True)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        raise LAVTUserError(f"{args.out_dir} exists and is not empty; choose a new folder")
    model = load_official(args.checkpoint, pwam_heads=heads)
    model.config.image_size = args.image_size
    tokenizer = None
    if model.text_encoder is not None:
        tokenizer = ExpressionTokenizer(args.vocab or default_text_encoder_dir(), max_tokens=model.config.max_tokens)
    try:  # written beside the target and swapped in: a failed conversion leaves no half folder
        save_model_folder(model, args.out_dir, tokenizer)
    except OSError as exc:
        raise LAVTUserError(f"could not write {args.out_dir} ({exc.strerror or exc}); nothing was kept: free some space or choose "
                            "another folder") from exc
    c = model.config
    print(
        f"converted {args.checkpoint} -> {args.out_dir}: Swin embed {c.embed_dim}, depths {list(c.depths)}, "
        f"window {c.window_size}, PWAM heads {list(c.pwam_heads)}, "
        + (f"text encoder {c.text_encoder['num_hidden_layers']} layers x {c.text_dim}" if c.text_encoder else "no text encoder")
        + f", {model.num_parameters() / 1e6:.1f} M parameters"
    )
    if model.text_encoder is None:
        print("note: the checkpoint holds no text encoder; pass text features to the model yourself")
    return 0
