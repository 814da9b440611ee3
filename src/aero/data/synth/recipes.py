"""Synthesis recipes: which splits to write, with which voices, sentences, task mix and effects.

Built-in recipes are plain dataclasses below; a YAML file may start from one (`base: train`)
and hold only what differs, e.g. `splits: {train: {samples: 20000}}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

UNDERSTAND_KINDS = ("gender", "rate", "background", "speakers")  # the understand task's questions


class RecipeError(ValueError):
    """A recipe name or file the user must fix; the message names it."""


@dataclass(frozen=True)
class Split:
    name: str  # manifest name: OUT/<name>.jsonl, audio OUT/audio/<name>-NNNNNN.flac
    samples: int
    voices: (
        str  # a voice set of voices.voice_set: train, train-espeak, flite, train-flite, recorded,
    )
    # neural, heldout-espeak, heldout-slt, heldout
    heldout_text: bool  # draw sentences/questions from the held-out side of the text split
    mix: dict  # task -> weight (transcribe, instruct, understand, long)
    augment: float = 0.5  # probability that a sample is augmented (noise, telephone, reverb, ...)
    long_seconds: tuple = (60.0, 360.0)  # length range of long recordings
    generated_share: float = 0.2  # share of generated number/date/time sentences
    understand_kinds: tuple = UNDERSTAND_KINDS  # questions of the understand task
    # (low, high) cents: every clip's pitch and formants are shifted by a draw from this range
    # (sox `pitch`, a vocal-tract-length change: male voices made higher, for more speakers)
    voice_shift: tuple = ()
    # probability that a clip also passes through a recording channel (augment.plan_channel: a
    # room, then a telephone line and its codec or a wideband codec)
    channel: float = 0.0

    def __post_init__(self):  # YAML gives a list; a frozen split keeps a tuple
        object.__setattr__(self, "long_seconds", tuple(self.long_seconds))
        object.__setattr__(self, "understand_kinds", tuple(self.understand_kinds))
        object.__setattr__(self, "voice_shift", tuple(self.voice_shift))
        if self.voice_shift and not (
            len(self.voice_shift) == 2
            and all(isinstance(c, int) for c in self.voice_shift)
            and -1200 <= self.voice_shift[0] <= self.voice_shift[1] <= 1200
        ):
            raise RecipeError(
                f"split {self.name}: voice_shift must be [low, high] whole cents within +-1200; "
                f"got {list(self.voice_shift)}."
            )
        if (
            self.voice_shift
            and self.mix.get("understand", 0) > 0
            and "gender" in self.understand_kinds
        ):
            raise RecipeError(
                f"split {self.name}: a shifted voice has no honest gender label; "
                "leave gender out of understand_kinds or drop voice_shift."
            )
        if not 0 <= self.channel <= 1:
            raise RecipeError(
                f"split {self.name}: channel must be within [0, 1]; got {self.channel}."
            )
        unknown = set(self.understand_kinds) - set(UNDERSTAND_KINDS)
        if unknown or not self.understand_kinds:
            raise RecipeError(
                f"split {self.name}: "
                f"understand_kinds must be some of {', '.join(UNDERSTAND_KINDS)}; "
                f"got {list(self.understand_kinds)}."
            )


@dataclass(frozen=True)
class Recipe:
    name: str
    splits: tuple[Split, ...] = field(default_factory=tuple)


TRAIN_MIX = {"transcribe": 0.7, "instruct": 0.1, "understand": 0.1, "long": 0.1}

RECIPES = {
    "train": Recipe("train", (Split("train", 20000, "train", False, TRAIN_MIX, augment=0.5),)),
    "heldout": Recipe(
        "heldout",
        (
            Split("heldout-espeak", 300, "heldout-espeak", True, {"transcribe": 1.0}, augment=0.0),
            Split("heldout-slt", 300, "heldout-slt", True, {"transcribe": 1.0}, augment=0.0),
            Split(
                "heldout-long",
                12,
                "heldout",
                True,
                {"long": 1.0},
                augment=0.0,
                long_seconds=(300.0, 330.0),
            ),
            Split("heldout-instruct", 120, "heldout", True, {"instruct": 1.0}, augment=0.0),
            Split("heldout-understanding", 400, "heldout", True, {"understand": 1.0}, augment=0.5),
        ),
    ),
    # A few seconds of everything, for tests and smoke runs.
    "tiny": Recipe(
        "tiny",
        (
            Split(
                "train",
                8,
                "train",
                False,
                {"transcribe": 0.4, "instruct": 0.2, "understand": 0.2, "long": 0.2},
                augment=0.7,
                long_seconds=(4.0, 6.0),
            ),
            Split("heldout-espeak", 2, "heldout-espeak", True, {"transcribe": 1.0}, augment=0.0),
            Split("heldout-slt", 1, "heldout-slt", True, {"transcribe": 1.0}, augment=0.0),
            Split(
                "heldout-long",
                1,
                "heldout",
                True,
                {"long": 1.0},
                augment=0.0,
                long_seconds=(4.0, 6.0),
            ),
            Split("heldout-instruct", 2, "heldout", True, {"instruct": 1.0}, augment=0.0),
            Split("heldout-understanding", 3, "heldout", True, {"understand": 1.0}, augment=0.5),
        ),
    ),
}


def _overlay(split: Split, changes: dict, where: str) -> Split:
    names = {f.name for f in fields(Split)}
    unknown = set(changes) - names
    if unknown:
        raise RecipeError(
            f"{where}: unknown split settings {sorted(unknown)}; known: {sorted(names)}."
        )
    return replace(split, **changes)


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a YAML file `{base: <name>, splits: {<split>: {...}}}`."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        raise RecipeError(
            f"Unknown recipe {name_or_path!r}; use one of {', '.join(RECIPES)} or a .yaml file."
        )
    if not path.exists():
        raise RecipeError(f"Recipe file {path} does not exist.")
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"base", "splits", "only"}
    if unknown:
        raise RecipeError(f"{path}: unknown keys {sorted(unknown)}; use base, splits and only.")
    base = data.get("base", "train")
    if base not in RECIPES:
        raise RecipeError(f"{path}: base {base!r} is not one of {', '.join(RECIPES)}.")
    splits = {s.name: s for s in RECIPES[base].splits}
    for split_name, changes in (data.get("splits") or {}).items():
        if split_name in splits:
            splits[split_name] = _overlay(splits[split_name], changes or {}, str(path))
        else:
            try:
                splits[split_name] = Split(name=split_name, **(changes or {}))
            except TypeError as err:
                raise RecipeError(
                    f"{path}: new split {split_name!r} is incomplete ({err})."
                ) from None
    keep = data.get("only") or list(splits)
    return Recipe(path.stem, tuple(splits[n] for n in keep))
