"""Subtitle cues from word timestamps (`aero.formats.word_cues`) and the json words, checked on
a 10-minute synthetic word list through real SRT and WebVTT parsers."""

import json
import random
import re
from datetime import timedelta

import pytest
import srt

from aero.engine import AudioInfo, Result, Segment
from aero.formats import cues, to_dict, to_json, to_srt, to_vtt, word_cues, wrap
from aero.timestamps import Word

MAX_SECONDS, MAX_LINES, MAX_CHARS, PAUSE = 7.0, 2, 42, 0.5
LONG_WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis-like"  # 50 characters
VOCABULARY = (
    "the a of and to in is it that was for on are with as I his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like "
    "so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find "
    "extraordinarily unquestionably responsibilities"
).split()


def sentence_end(text: str) -> bool:  # the test's own reading of the rule
    return re.search(r"[.!?][\"')\]]*$", text) is not None


def synthetic_words(seconds: float = 600.0, seed: int = 0) -> list[Word]:
    """Random words at speech rate, with commas, sentence ends (some inside quotes), long pauses,
    one 50-character word, one long sentence without punctuation and an exact 0.5 s gap."""
    rng = random.Random(seed)
    words: list[Word] = []
    t, in_sentence, n = 0.0, 0, 0
    while not words or words[-1].end < seconds:
        n += 1
        if n == 300:
            text = LONG_WORD
        else:
            text = rng.choice(VOCABULARY)
            if in_sentence == 0:
                text = text.capitalize()
        in_sentence += 1
        if 400 <= n < 470:  # 70 words, no punctuation, no pause: cut by the limits alone
            pass
        elif rng.random() < 0.12:
            text += rng.choice([".", ".", "?", "!", '."', "?)"])
            in_sentence = 0
        elif rng.random() < 0.08:
            text += ","
        start = round(t, 3)
        end = round(start + rng.uniform(0.12, 0.6), 3)
        words.append(Word(start, end, text, probability=round(rng.uniform(0.5, 1.0), 4)))
        gap = rng.uniform(0.0, 0.25) if not 400 <= n < 470 else 0.02
        if n == 200:
            gap = PAUSE
        elif rng.random() < 0.04 and not 400 <= n < 470:
            gap = rng.uniform(PAUSE, 2.5)
        t = end + gap
    return words


@pytest.fixture(scope="module")
def words():
    return synthetic_words()


@pytest.fixture(scope="module")
def result(words):
    r = Result(text=" ".join(w.text for w in words), token_ids=[], finish_reason="stop",
               prompt_tokens=0, audios=[AudioInfo(words[-1].end + 1, [])])  # fmt: skip
    r.segments = [Segment(0.0, 30.0, "window text that the words replace")]
    r.words = words
    return r


def seconds(td: timedelta) -> float:
    return td.total_seconds()


@pytest.fixture(scope="module")
def parsed(result):
    """(start, end, lines) of each SRT cue, through the `srt` package's parser."""
    subtitles = list(srt.parse(to_srt(result)))
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1))
    return [(seconds(s.start), seconds(s.end), s.content.split("\n")) for s in subtitles]


@pytest.fixture(scope="module")
def cue_of(words, parsed):
    """For each input word, the index of the cue that holds it (cue texts read in order)."""
    owner = []
    for c, (_, _, lines) in enumerate(parsed):
        owner += [c] * len(" ".join(lines).split())
    assert len(owner) == len(words)
    return owner


def test_the_data_has_what_the_rules_are_about(words):
    assert words[-1].end >= 600 and len(words) > 1000
    assert sum(sentence_end(w.text) for w in words) > 100
    assert sum(b.start - a.end >= PAUSE - 1e-6 for a, b in zip(words, words[1:])) > 20
    assert LONG_WORD in [w.text for w in words] and len(LONG_WORD) == 50


def test_srt_cues_keep_the_limits_and_every_word(words, parsed):
    assert len(parsed) > 100
    for start, end, lines in parsed:
        assert 0 < end - start <= MAX_SECONDS + 1e-9
        assert 1 <= len(lines) <= MAX_LINES and all(line == line.strip() for line in lines)
        if lines != [LONG_WORD]:
            assert all(0 < len(line) <= MAX_CHARS for line in lines), lines
    for (_, end, _), (start, _, _) in zip(parsed, parsed[1:]):
        assert end <= start
    assert " ".join(" ".join(lines) for _, _, lines in parsed).split() == [w.text for w in words]
    assert [LONG_WORD] in [lines for _, _, lines in parsed]


def test_cues_start_and_end_with_their_words(words, parsed, cue_of):
    for c, (start, end, _) in enumerate(parsed):
        inside = [w for w, k in zip(words, cue_of) if k == c]
        assert start == pytest.approx(inside[0].start, abs=5e-4)
        assert end == pytest.approx(inside[-1].end, abs=5e-4)


def test_a_pause_starts_a_new_cue(words, cue_of):
    pauses = [k for k in range(len(words) - 1) if words[k + 1].start - words[k].end >= PAUSE - 1e-6]
    assert 199 in pauses  # the exact 0.5 s gap
    assert all(cue_of[k] != cue_of[k + 1] for k in pauses)


def two_lines_hold(texts: list[str]) -> bool:
    line = " ".join(texts)
    return len(line) <= MAX_CHARS or any(
        len(" ".join(texts[:k])) <= MAX_CHARS and len(" ".join(texts[k:])) <= MAX_CHARS
        for k in range(1, len(texts))
    )


def sentences(words: list[Word]) -> list[tuple[int, int]]:
    """[first, end) of each run of words cut after a sentence end and at pauses."""
    out, first = [], 0
    for k, w in enumerate(words):
        last = k + 1 == len(words)
        if last or sentence_end(w.text) or words[k + 1].start - w.end >= PAUSE - 1e-6:
            out.append((first, k + 1))
            first = k + 1
    return out


def test_cues_break_at_sentence_ends_when_the_limits_allow(words, cue_of):
    fitting = long = 0
    for a, b in sentences(words):
        texts = [w.text for w in words[a:b]]
        fits = words[b - 1].end - words[a].start <= MAX_SECONDS and two_lines_hold(texts)
        if fits:  # a sentence that fits in one cue is never split ...
            fitting += 1
            assert cue_of[a] == cue_of[b - 1], texts
            assert a == 0 or cue_of[a - 1] != cue_of[a] or sentence_end(words[a - 1].text)
        else:  # ... and a cut inside a sentence happens only where it did not fit
            long += cue_of[b - 1] != cue_of[a]
    assert fitting > 100 and long > 5
    # every cue boundary is a sentence end, a pause, or inside a sentence too long for one cue
    ends = {b for _, b in sentences(words)}
    for k in range(1, len(words)):
        if cue_of[k] != cue_of[k - 1] and k not in ends:
            a, b = next((a, b) for a, b in sentences(words) if a < k < b)
            texts = [w.text for w in words[a:b]]
            assert words[b - 1].end - words[a].start > MAX_SECONDS or not two_lines_hold(texts)


def test_vtt_has_the_same_cues(result, parsed):
    text = to_vtt(result)
    assert text.startswith("WEBVTT\n\n")
    stamp = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"
    blocks = re.findall(rf"^{stamp} --> {stamp}\n((?:.+\n)+)", text[len("WEBVTT\n\n") :], re.M)
    assert len(blocks) == len(parsed) == len(text.strip().split("\n\n")) - 1

    def at(h, m, s, ms):
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    for block, (start, end, lines) in zip(blocks, parsed):
        assert at(*block[:4]) == pytest.approx(start) and at(*block[4:8]) == pytest.approx(end)
        assert block[8].rstrip("\n").split("\n") == lines


def test_json_has_the_words(result, words):
    data = json.loads(to_json(result))
    assert len(data["words"]) == len(words)
    first = data["words"][0]
    assert set(first) == {"start", "end", "word", "probability"}
    assert first["word"] == words[0].text and first["start"] == round(words[0].start, 3)
    assert all(w["end"] == round(v.end, 3) for w, v in zip(data["words"], words))
    assert data["segments"]  # the segments are still there, beside the words


def test_a_long_sentence_is_cut_evenly_and_at_a_comma():
    even = [Word(0.3 * k, 0.3 * k + 0.25, "aaaa") for k in range(24)]  # 119 characters, 7.2 s
    sizes = [len(c.text.split()) for c in word_cues(even)]
    assert sizes == [12, 12]  # filling the first cue would leave a short tail
    texts = "one two three four five six, seven eight nine ten eleven twelve thirteen fourteen"
    comma = [Word(0.4 * k, 0.4 * k + 0.3, t) for k, t in enumerate((texts + " end").split())]
    assert [c.text.replace("\n", " ") for c in word_cues(comma, max_seconds=5.0)][0] == (
        "one two three four five six,"
    )


def test_short_sentences_share_a_cue_and_lines_are_balanced():
    ws = [Word(0.0, 0.3, "Yes."), Word(0.4, 0.7, "I"), Word(0.8, 1.2, "agree.")]
    assert [(c.start, c.end, c.text) for c in word_cues(ws)] == [(0.0, 1.2, "Yes. I agree.")]
    assert wrap(["aaaaa"] * 10) == ["aaaaa aaaaa aaaaa aaaaa aaaaa"] * 2
    assert wrap(["word"] * 3) == ["word word word"]  # one line when it fits
    assert wrap(["x" * 50]) == ["x" * 50]


def test_a_result_without_words_keeps_the_old_cues():
    r = Result(text="hello there", token_ids=[], finish_reason="stop", prompt_tokens=0,
               audios=[AudioInfo(65.0, [(0, 30), (30, 60), (60, 65.0)])])  # fmt: skip
    assert cues(r) == [Segment(0.0, 65.0, "hello there")]
    assert list(srt.parse(to_srt(r)))[0].end == timedelta(seconds=65)
    r.segments = [Segment(0.0, 30.0, "hello"), Segment(30.0, 60.0, "  "), Segment(60, 65, "there")]
    assert [c.text for c in cues(r)] == ["hello", "there"]
    r.words = []
    assert [c.text for c in cues(r)] == ["hello", "there"] and to_dict(r)["words"] == []
    r.words = [Word(1.0, 1.5, "hello"), Word(61.0, 61.5, "there")]
    assert [(c.start, c.end, c.text) for c in cues(r)] == [
        (1.0, 1.5, "hello"),
        (61.0, 61.5, "there"),
    ]
