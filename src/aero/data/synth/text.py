"""Sentences to speak: English from the Debian `fortunes` files plus generated number sentences.

Notable choices:
- A sentence is a (text, say) pair: `text` is the transcript target as written, `say` is what
  the TTS reads. They differ only for generated sentences with numbers, dates, times and money,
  whose spoken form we write out in words ourselves: espeak reads "1990" as "nineteen hundred
  ninety" and "$5.20" as "dollar five point two zero", which would teach wrong targets.
- Fortune sentences with digits or symbols are dropped for the same reason; the rest keep
  their punctuation and case (the evaluation normaliser handles those).
- Training and held-out sentences are split by a hash of the text, independent of any seed,
  so every run with every seed keeps them disjoint.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Sets skipped: pictures, code, other languages, and topics where jokes tend to demean people.
SKIPPED_FORTUNE_SETS = {
    "art",
    "ascii-art",
    "perl",
    "translate-me",
    "ethnic",
    "men-women",
    "drugs",
    "politics",
    "debian",
    "linux",
    "linuxcookie",
    "computers",
    "knghtbrd",
}
MIN_WORDS, MAX_WORDS = 3, 30
HELDOUT_PERCENT = 10  # share of the sentence pool reserved for held-out sets
_ALLOWED = re.compile(r"^[A-Za-z0-9 .,;:!?'\"()\-]+$")


@dataclass(frozen=True)
class Sentence:
    text: str  # the transcript, as written
    say: str  # what the TTS reads
    source: str  # "fortunes:<set>" or "generated:<template>"


def is_heldout(text: str, percent: int = HELDOUT_PERCENT) -> bool:
    """Deterministic train/held-out split of any text (sentences, questions)."""
    return int(hashlib.sha1(text.lower().encode()).hexdigest(), 16) % 100 < percent


def _clean(raw: str) -> str:
    text = raw.replace("``", '"').replace("''", '"').replace("--", " - ")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"^[\-\s]+", "", text)


def _fortune_sentences(path: Path) -> list[str]:
    out = []
    for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
        lines = [
            ln for ln in entry.splitlines() if not re.match(r"^\s*--", ln)
        ]  # drop attributions
        if any(re.match(r"^\s*[A-Z][A-Za-z .]*:\s", ln) for ln in lines):
            continue  # dialogues ("Q: ... A: ...") read badly as one voice
        for piece in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", " ".join(lines)):
            s = _clean(piece)
            if (
                not _ALLOWED.match(s)
                or re.search(r"\d", s)
                or s.count('"') % 2
                or s.count("(") != s.count(")")
            ):
                continue
            if re.search(r"\b[A-Z]\.$", s):
                continue  # cut after an initial ("I knew Leo G.")
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS and s[-1] in ".!?" and s[0].isupper():
                out.append(s)
    return out


@lru_cache(maxsize=1)
def fortune_sentences() -> tuple[Sentence, ...]:
    """All usable fortune sentences (deduplicated, sorted so the pool is the same everywhere)."""
    if not FORTUNES_DIR.is_dir():
        return ()
    seen: dict[str, str] = {}
    for path in sorted(FORTUNES_DIR.iterdir()):
        if path.suffix or path.name in SKIPPED_FORTUNE_SETS or not path.is_file():
            continue
        for s in _fortune_sentences(path):
            seen.setdefault(s, f"fortunes:{path.name}")
    return tuple(Sentence(t, t, src) for t, src in sorted(seen.items()))


# ---- numbers in words -------------------------------------------------------------------
_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORD = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def number_words(n: int) -> str:
    """Cardinal in words: 1234 -> 'one thousand two hundred thirty four'."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in (
        (10**9, "billion"),
        (10**6, "million"),
        (1000, "thousand"),
        (100, "hundred"),
    ):
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + (
                "" if rest == 0 else " " + number_words(rest)
            )
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    if last in _ORD:
        last = _ORD[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(words[:-1] + [last])


def ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def year_words(y: int) -> str:
    if 2000 <= y <= 2009:
        return number_words(y)
    hi, lo = divmod(y, 100)
    return number_words(hi) + (
        " hundred" if lo == 0 else (" oh " + _ONES[lo]) if lo < 10 else " " + number_words(lo)
    )


def _time(rng: random.Random) -> tuple[str, str]:
    h, m = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 30, 45, rng.randint(1, 59)])
    ampm = rng.choice(["a.m.", "p.m."])
    say_min = "" if m == 0 else (" oh " + _ONES[m]) if m < 10 else " " + number_words(m)
    text = f"{h}:{m:02d} {ampm}" if m else rng.choice([f"{h} {ampm}", f"{h}:00 {ampm}"])
    return text, f"{number_words(h)}{say_min} {ampm.replace('.', ' ').strip()}"


_NOUNS = [
    "apples",
    "books",
    "chairs",
    "students",
    "cars",
    "boxes",
    "letters",
    "tickets",
    "birds",
    "houses",
    "trees",
    "emails",
    "pages",
    "songs",
    "coins",
]
_PLACES = [
    "Paris",
    "London",
    "Boston",
    "Chicago",
    "Denver",
    "Madrid",
    "Tokyo",
    "Sydney",
    "Toronto",
    "Dublin",
    "Seattle",
    "Austin",
]
_NAMES = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Irene",
    "Jack",
    "Laura",
    "Mark",
    "Nina",
    "Oscar",
    "Paula",
    "Sam",
]


def generated_sentence(rng: random.Random) -> Sentence:
    """One sentence with a number, date, time, price, percentage or year."""
    kind = rng.choice(["count", "date", "time", "money", "percent", "year", "phone", "big"])
    name, place, noun = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_NOUNS)
    if kind == "count":
        n = rng.choice([rng.randint(2, 20), rng.randint(21, 99), rng.randint(100, 999)])
        text = f"{name} bought {n} {noun} in {place}."
        say = f"{name} bought {number_words(n)} {noun} in {place}."
    elif kind == "date":
        mo, d, y = rng.choice(MONTHS), rng.randint(1, 28), rng.randint(1950, 2029)
        text = f"The meeting in {place} is on {mo} {d}{ordinal_suffix(d)}, {y}."
        say = f"The meeting in {place} is on {mo} {ordinal_words(d)}, {year_words(y)}."
    elif kind == "time":
        t, st = _time(rng)
        day = rng.choice(WEEKDAYS)
        text, say = f"{name} will call at {t} on {day}.", f"{name} will call at {st} on {day}."
    elif kind == "money":
        dollars, cents = rng.randint(1, 500), rng.choice([0, rng.randint(1, 99)])
        text = f"The ticket to {place} costs ${dollars}" + (f".{cents:02d}." if cents else ".")
        say = (
            f"The ticket to {place} costs "
            f"{number_words(dollars)} dollar{'s' if dollars != 1 else ''}"
            + (f" and {number_words(cents)} cent{'s' if cents != 1 else ''}." if cents else ".")
        )
    elif kind == "percent":
        p = rng.randint(1, 99)
        text, say = (
            f"About {p}% of the {noun} were sold.",
            f"About {number_words(p)} percent of the {noun} were sold.",
        )
    elif kind == "year":
        y = rng.randint(1800, 2029)
        text, say = (
            f"{name} moved to {place} in {y}.",
            f"{name} moved to {place} in {year_words(y)}.",
        )
    elif kind == "phone":
        digits = [rng.randint(0, 9) for _ in range(7)]
        num = "".join(map(str, digits))
        text = f"Call {name} at {num[:3]}-{num[3:]}."
        say = (
            f"Call {name} at {' '.join(_ONES[d] for d in digits[:3])}, "
            f"{' '.join(_ONES[d] for d in digits[3:])}."
        )
    else:
        n = rng.randint(1000, 999_999)
        text, say = (
            f"The city of {place} has {n:,} {noun}.",
            f"The city of {place} has {number_words(n)} {noun}.",
        )
    return Sentence(text, say, f"generated:{kind}")


class SentencePool:
    """Draws sentences of one side of the train/held-out split."""

    def __init__(self, heldout: bool, generated_share: float = 0.2):
        self.heldout = heldout
        self.generated_share = generated_share
        self.fortunes = [s for s in fortune_sentences() if is_heldout(s.text) == heldout]
        if not self.fortunes and generated_share < 1:
            from aero.data.synth.tools import ToolMissing

            raise ToolMissing(
                f"No sentences found in {FORTUNES_DIR}; run: apt-get install -y fortunes "
                "(or set generated_share: 1.0 in the recipe)."
            )

    def draw(self, rng: random.Random) -> Sentence:
        if self.fortunes and rng.random() >= self.generated_share:
            return rng.choice(self.fortunes)
        for _ in range(1000):  # generated sentences are split by the same hash
            s = generated_sentence(rng)
            if is_heldout(s.text) == self.heldout:
                return s
        raise RuntimeError("no generated sentence on this side of the split")
