"""The four tasks as plans: what to speak, with which voice and effects, and the target text.

A `Job` (render.py) is a complete, picklable description of one sample; rendering it makes
the audio and nothing random happens there. Labels of the understanding task come only from
how the audio is made (the voice definition, espeak's rate, the background that was mixed in,
how many voices were joined), so they are true by construction.
"""

from __future__ import annotations

import random
from dataclasses import replace

from aero.data.synth import augment
from aero.data.synth.recipes import UNDERSTAND_KINDS
from aero.data.synth.render import Job
from aero.data.synth.text import Sentence
from aero.data.synth.voices import PITCH_RANGE, RATE_LABELS, RATE_RANGE, Speech, Voice
from aero.evaluation.runner import ASR_PROMPT
from aero.processing import TRANSCRIBE_PROMPT

TASKS = ("transcribe", "instruct", "understand", "long")
TRANSCRIBE_PROMPTS = (
    TRANSCRIBE_PROMPT,
    ASR_PROMPT,
    "Transcribe the audio.",
    "What does the speaker say?",
    "Write down exactly what is said in this recording.",
    "Convert the speech to text.",
    "Please write out the speech in this audio clip.",
    "Transcribe this recording word for word.",
)
INSTRUCT_PROMPTS = (
    "Answer the question in the audio.",
    "Respond to the speaker.",
    "Listen and reply to the request.",
    "Please respond to what the speaker asks.",
    "Reply to the audio.",
)
CHOICE_SUFFIX = (
    "Answer with the option's letter from the given choices directly."  # as in lmms-eval
)
BACKGROUND_NAMES = {
    "white": "white noise",
    "pink": "pink noise",
    "brown": "brown noise",
    "music": "music",
    None: "no background sound",
}


def prosody(
    rng: random.Random, voice: Voice, text: str, rate_range: tuple[int, int] | None = None
) -> Speech:
    """Random espeak rate/pitch/word gap or festival stretch; a given rate_range (a speaking-rate
    label) also fixes the word gap at 0 so the rate alone sets the pace."""
    if voice.engine == "espeak":
        gap = 0 if rate_range else rng.choice([0, 0, 0, 1, 2, 3, 5])
        rate_range = rate_range or RATE_RANGE
        return Speech(
            text,
            voice,
            rate=rng.randint(*rate_range),
            pitch=rng.randint(*PITCH_RANGE),
            word_gap=gap,
        )
    return Speech(text, voice, stretch=round(rng.uniform(0.85, 1.2), 3))


def _with(speech: Speech, say: str) -> Speech:
    return replace(speech, say=say)


def transcribe(rng: random.Random, voices: list[Voice], sentence: Sentence, aug: float) -> Job:
    speech = prosody(rng, rng.choice(voices), sentence.say)
    return Job(
        "",
        "",
        "transcribe",
        rng.choice(TRANSCRIBE_PROMPTS),
        [speech],
        [],
        augment.plan(rng, aug),
        [sentence.text],
        sentence.text,
        meta={"sources": [sentence.source]},
    )


def instruct(rng: random.Random, voices: list[Voice], question: Sentence, aug: float) -> Job:
    speech = prosody(rng, rng.choice(voices), question.say)
    return Job(
        "",
        "",
        "instruct",
        rng.choice(INSTRUCT_PROMPTS),
        [speech],
        [],
        augment.plan(rng, aug),
        [question.text],
        None,
        meta={"question": question.text, "sources": [question.source]},
    )


def long(
    rng: random.Random, voices: list[Voice], sentences: list[Sentence], seconds: float, aug: float
) -> Job:
    """One voice reading `sentences` (more than enough) until the audio lasts `seconds`."""
    base = prosody(rng, rng.choice(voices), "")
    return Job(
        "",
        "",
        "long",
        rng.choice(TRANSCRIBE_PROMPTS),
        [_with(base, s.say) for s in sentences],
        [round(rng.uniform(0.2, 0.8), 2) for _ in sentences[1:]],
        augment.plan(rng, aug),
        [s.text for s in sentences],
        None,
        min_seconds=seconds,
        meta={"sources": [s.source for s in sentences]},
    )


def _choice(rng: random.Random, question: str, options: list[str], answer: str) -> tuple[str, str]:
    options = options[:]
    rng.shuffle(options)
    letters = "ABCDEFGH"
    lines = [f"{letters[i]}. {o}" for i, o in enumerate(options)]
    return f"{question}\n" + "\n".join(lines) + f"\n{CHOICE_SUFFIX}", letters[options.index(answer)]


def _other_voice(rng: random.Random, voices: list[Voice], first: Voice) -> Voice:
    """A clearly different voice: another gender when there is one, else any other voice."""
    others = [v for v in voices if v.gender != first.gender] or [
        v for v in voices if v.key != first.key
    ]
    if not others:
        raise ValueError("the speakers task needs at least two voices in the voice set")
    return rng.choice(others)


def _gender_question(
    rng: random.Random, voices: list[Voice], s1: Sentence, s2: Sentence, aug: float, mc: bool
):
    """Is the speaker male or female?"""
    texts = [s1.text]
    speech = [prosody(rng, rng.choice(voices), s1.say)]
    label = speech[0].voice.gender
    effects = augment.plan(rng, aug)
    if mc:
        prompt, answer = _choice(
            rng, "What is the gender of the speaker?", ["male", "female"], label
        )
    else:
        prompt, answers = rng.choice(
            [
                ("Is the speaker male or female?", {"male": "Male.", "female": "Female."}),
                ("What is the gender of the speaker?", {"male": "Male.", "female": "Female."}),
                (
                    "Is this a man or a woman speaking?",
                    {"male": "A man.", "female": "A woman."},
                ),
            ]
        )
        answer = answers[label]
    return speech, texts, label, effects, prompt, answer


def _rate_question(
    rng: random.Random, voices: list[Voice], s1: Sentence, s2: Sentence, aug: float, mc: bool
):
    """How fast is the speech? (espeak voices only: their rate is exact.)"""
    espeak = [v for v in voices if v.engine == "espeak"]
    texts = [s1.text]
    label = rng.choice(list(RATE_LABELS))
    speech = [prosody(rng, rng.choice(espeak), s1.say, RATE_LABELS[label])]
    effects = augment.plan(rng, aug, speed=False)  # a speed change would falsify the label
    if mc:
        prompt, answer = _choice(
            rng, "How fast is the person speaking?", ["slow", "normal", "fast"], label
        )
    else:
        prompt, answers = rng.choice(
            [
                (
                    "How fast is the person speaking: slowly, at a normal pace, or fast?",
                    {"slow": "Slowly.", "normal": "At a normal pace.", "fast": "Fast."},
                ),
                (
                    "Is the speech slow, normal or fast?",
                    {"slow": "Slow.", "normal": "Normal.", "fast": "Fast."},
                ),
            ]
        )
        answer = answers[label]
    return speech, texts, label, effects, prompt, answer


def _background_question(
    rng: random.Random, voices: list[Voice], s1: Sentence, s2: Sentence, aug: float, mc: bool
):
    """What sound is behind the speech: none, a noise colour or music?"""
    texts = [s1.text]
    bg = rng.choice([None, None, *augment.BACKGROUNDS])
    speech = [prosody(rng, rng.choice(voices), s1.say)]
    effects = augment.plan(rng, aug, background=bg)
    label = BACKGROUND_NAMES[bg]
    if mc:
        prompt, answer = _choice(
            rng,
            "What can be heard in the background of this recording?",
            list(BACKGROUND_NAMES.values()),
            label,
        )
    elif rng.random() < 0.5:
        prompt = "Is there any background noise or music in this recording?"
        answer = "No." if bg is None else f"Yes, {label}."
    else:
        prompt = "What kind of background sound is in this recording?"
        answer = label[0].upper() + label[1:] + "."
    return speech, texts, label, effects, prompt, answer


def _speakers_question(
    rng: random.Random, voices: list[Voice], s1: Sentence, s2: Sentence, aug: float, mc: bool
):
    """How many people speak: one voice twice, or two different voices?"""
    first = prosody(rng, rng.choice(voices), s1.say)
    n = rng.choice([1, 2])
    second = (
        _with(first, s2.say)
        if n == 1
        else prosody(rng, _other_voice(rng, voices, first.voice), s2.say)
    )
    speech, texts, label = [first, second], [s1.text, s2.text], str(n)
    effects = augment.plan(rng, aug)
    if mc:
        prompt, answer = _choice(
            rng,
            "How many people are speaking in this recording?",
            ["one", "two"],
            ["one", "two"][n - 1],
        )
    else:
        prompt = rng.choice(
            ["How many people are speaking in this recording?", "How many speakers are there?"]
        )
        answer = ["One.", "Two."][n - 1]
    return speech, texts, label, effects, prompt, answer


QUESTIONS = {
    "gender": _gender_question,
    "rate": _rate_question,
    "background": _background_question,
    "speakers": _speakers_question,
}


def understand(
    rng: random.Random,
    voices: list[Voice],
    sentences: list[Sentence],
    aug: float,
    kinds: tuple[str, ...] = UNDERSTAND_KINDS,
    choice_share: float = 0.3,
) -> Job:
    """A question about how the audio sounds. `sentences` holds two sentences (the speakers
    task may use both)."""
    espeak = [v for v in voices if v.engine == "espeak"]
    kind = rng.choice([k for k in kinds if k != "rate" or espeak])
    mc = rng.random() < choice_share
    s1, s2 = sentences[0], sentences[1]
    make = QUESTIONS.get(kind)
    if make is None:
        raise ValueError(f"unknown understanding task {kind!r}")
    speech, texts, label, effects, prompt, answer = make(rng, voices, s1, s2, aug, mc)
    meta = {
        "question_kind": kind,
        "label": label,
        "multiple_choice": mc,
        "sources": [s1.source, s2.source][: len(speech)],
    }
    pauses = [round(rng.uniform(0.3, 0.8), 2)] if len(speech) == 2 else []
    return Job("", "", "understand", prompt, speech, pauses, effects, texts, answer, meta=meta)
