"""`lavt push DIR org/name`: upload a saved or exported model folder to the Hugging Face Hub."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a model folder (saved or exported) to the Hugging Face Hub",
        description="Creates the repo when needed and uploads the folder with its model card; needs a "
        "Hub login (`hf auth login` or HF_TOKEN).",
    )
    p.add_argument("folder", type=Path, help="folder written by save_pretrained, lavt convert, lavt demo or lavt export")
    p.add_argument("repo_id", help="ORG/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lavt.hub import check_push_arguments, push

    check_push_arguments(args.folder, args.repo_id)  # before any network call
    print(f"uploaded {args.folder} -> {push(args.folder, args.repo_id, private=args.private, message=args.message)}")
    return 0
