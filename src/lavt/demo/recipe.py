"""The demo recipe: the small LAVT of `lavt demo` and how it is trained, as one dataclass.

What the recipe takes from LAVT is everything (the model, the loss, the engine's training
step); what it chooses for learning in minutes on 2 CPU cores is here: the size of the
model, a from-scratch learning rate with a short warm-up, a wall-time budget, a curriculum
and kind weights for the expressions. `DemoRecipe.from_options` turns `lavt demo --train`'s
options into a recipe. Reading the recipe needs no torch, so `lavt --help` stays quick.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavt.data.synthref import KINDS
from lavt.demo import shipped_model_dir
from lavt.errors import LAVTUserError
from lavt.runtime.folder import refuse_export_folder

# Architecture options: without a value they take the --init model's (from its config.json),
# else the recipe's defaults.
ARCHITECTURE = ("image_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "decoder_hidden", "pwam_norm")
# training time of the default `lavt demo --train`: with data generation and evaluation the
# whole run stays within 10 minutes on 2 cores
DEFAULT_MINUTES = 8.5
# `--quick`: the smoke run (CI): 20 steps on 60 scenes
QUICK = {"steps": 20, "minutes": None, "train_images": 60, "warmup_steps": 5}
# The kinds of generated scenes: synthref's shapes, or top-down aerial scenes (synthrs)
STYLES = ("synthref", "aerial")
# `--style aerial` fine-tunes a trained demo model (by default the shipped one); these are the
# defaults of the options left unset. The from-scratch learning rate with a short warm-up: on
# a busy machine the run may get only a few hundred steps. Aerial scenes cost more to generate
# than synthref's, so fewer of them and a shorter training leave the 10 minutes room for
# generation and evaluation.
AERIAL = {"lr": 1e-3, "warmup_steps": 10, "curriculum": 0.0, "train_images": 600}
AERIAL_MINUTES = 7.0


@dataclass
class DemoRecipe:
    """Model size and training recipe of the demo model (every field is a CLI option)."""

    image_size: int = 128
    patch_size: int = 4
    embed_dim: int = 32
    depths: tuple[int, ...] = (1, 1, 2, 1)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    window_size: int = 8
    decoder_hidden: int = 64  # the official 4 * embed_dim makes the 1/4-scale convs dominate the step
    pwam_heads: tuple[int, ...] = (1, 2, 2, 4)
    ape: bool = True  # Swin's absolute position embedding: "leftmost", "at the top" need absolute position
    decoder_features: str = "multimodal"
    # PWAM without its instance norms (an ablation switch): the norms pass only how the
    # attended language varies over the pixels, so from scratch the sentence reaches the image
    # only once pixel-word alignment is learned
    pwam_norm: str = "none"
    drop_path_rate: float = 0.1
    steps: int = 1500
    # A wall-time budget instead of a step count (the 10-minute run): the schedule and the
    # curriculum follow the share of the budget spent, so the run uses what the machine offers
    minutes: float | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    curriculum: float = 0.2  # share of the run that sees attribute expressions only
    # Sampling weight of each expression kind within a ref (absent kinds weigh 1; empty =
    # uniform over the ref's expressions): late stages spend more steps on the weakest kind
    kind_weights: dict[str, float] = field(default_factory=dict)
    dice_weight: float = 1.0
    precision: str = "auto"  # auto = bf16 where the CPU has it natively, else fp32
    train_images: int = 4000
    data_seed: int = 0
    seed: int = 0
    init: str | None = None  # start from this demo model's weights instead of scratch (see warmstart.py)
    style: str = "synthref"  # the generated scenes it trains on (STYLES)
    # Generalised referring segmentation: train only the no-target head (`no_target="head"`)
    # of the `init` model on generalised scenes, every other weight frozen, so its masks stay
    # exactly the init model's
    generalized: bool = False

    @classmethod
    def from_options(
        cls,
        *,
        steps: int | None = None,
        minutes: float | None = None,
        quick: bool = False,
        init: str | Path | None = None,
        style: str = "synthref",
        scratch: bool = False,
        **options: Any,
    ) -> DemoRecipe:
        """The recipe of `lavt demo --train`. `options` are recipe fields, None meaning the
        default: for the architecture fields the `init` model's own (its config.json), else
        the recipe's. Neither `steps` nor `minutes`: a budget of DEFAULT_MINUTES; `quick`:
        the 20-step smoke run. `style` "aerial" fine-tunes the shipped model unless `init` or
        `scratch` says otherwise, with the AERIAL defaults."""
        if steps is not None and minutes is not None:
            raise LAVTUserError("give --steps or --minutes, not both")
        if scratch and init is not None:
            raise LAVTUserError("give --init or --scratch, not both")
        if style == "aerial":
            if init is None and not scratch:
                init = shipped_model_dir()
            if init is not None:
                options = {**options, **{k: v for k, v in AERIAL.items() if options.get(k) is None}}
        if steps is None and minutes is None:
            minutes = AERIAL_MINUTES if style == "aerial" else DEFAULT_MINUTES
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown demo recipe fields: {', '.join(unknown)}")
        arch = init_architecture(Path(init)) if init else {k: getattr(cls, k) for k in ARCHITECTURE}
        arch.update({k: v for k, v in options.items() if k in ARCHITECTURE and v is not None})
        rest = {k: v for k, v in options.items() if k not in ARCHITECTURE and v is not None}
        recipe = cls(**arch, **rest, steps=cls.steps if steps is None else steps, minutes=minutes, init=str(init) if init else None,
                     style=style)
        if quick:
            recipe = dataclasses.replace(recipe, **QUICK)
        return recipe

    def model_config(self) -> Any:
        """The LAVTConfig of this recipe, with the packaged MiniLM as its (frozen) text encoder."""
        # lavt.models imports torch: imported here so that reading a recipe (the CLI's
        # defaults, `lavt --help`) does not
        from lavt.models import LAVTConfig
        from lavt.models.text_encoder import PACKAGED_MINILM, bert_config_dict, default_text_encoder_dir

        bert = bert_config_dict(json.loads((default_text_encoder_dir() / "config.json").read_text()))
        return LAVTConfig(
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depths=self.depths,
            num_heads=self.num_heads,
            window_size=self.window_size,
            decoder_hidden=self.decoder_hidden,
            drop_path_rate=self.drop_path_rate,
            pwam_heads=self.pwam_heads,
            ape=self.ape,
            decoder_features=self.decoder_features,
            pwam_norm=self.pwam_norm,
            text_dim=bert["hidden_size"],
            text_encoder=bert,
            text_encoder_weights=PACKAGED_MINILM,
            image_size=self.image_size,
            no_target="head" if self.generalized else "none",
        )

    def validate(self) -> None:
        """Raise `LAVTUserError` naming the option of the first impossible value."""
        for name in ("image_size", "patch_size", "embed_dim", "window_size", "decoder_hidden", "steps", "batch_size", "train_images"):
            if int(getattr(self, name)) < 1:
                raise LAVTUserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.minutes is not None and not self.minutes > 0:
            raise LAVTUserError(f"--minutes must be positive, got {self.minutes}")
        if self.lr <= 0:
            raise LAVTUserError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise LAVTUserError(f"--drop-path must lie in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.curriculum < 1.0:
            raise LAVTUserError(f"--curriculum must lie in [0, 1), got {self.curriculum}")
        for kind, w in self.kind_weights.items():
            if kind not in KINDS:
                raise LAVTUserError(f"--kind-weights: unknown expression kind {kind!r} (kinds: {', '.join(KINDS)})")
            if not (w >= 0 and math.isfinite(w)):
                raise LAVTUserError(f"--kind-weights: the weight of {kind} must be a finite number >= 0, got {w}")
        if self.kind_weights and not any(self.kind_weights.get(k, 1.0) > 0 for k in KINDS):
            raise LAVTUserError("--kind-weights: at least one kind needs a positive weight")
        if self.generalized and not self.init:
            raise LAVTUserError("--train --generalized trains the no-target head of a trained model: give it with --init MODEL_DIR")
        if self.style not in STYLES:
            raise LAVTUserError(f"--style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise LAVTUserError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def init_architecture(folder: Path) -> dict[str, Any]:
    """The architecture options of the demo model in `folder` (its config.json)."""
    refuse_export_folder(folder, "--init")
    path = folder / "config.json"
    if not path.is_file():
        raise LAVTUserError(
            f"--init {folder}: " + ("does not exist" if not folder.exists() else "no config.json there (not a saved model folder)")
        )
    try:
        cfg = json.loads(path.read_text())
        return {k: tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k] for k in ARCHITECTURE}
    except (ValueError, KeyError, TypeError) as e:
        raise LAVTUserError(f"--init {folder}: config.json is not a LAVT demo model's ({e.__class__.__name__}: {e})") from None
