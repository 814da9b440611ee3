"""Spoken questions and requests for the instruction task, written and spoken forms.

Notable choices:
- A question is a (text, say) pair like a sentence: the LLM answers `text` (digits as
  digits), the TTS reads `say` (numbers in words).
- The pool is finite and fixed (templates over small word lists, enumerated in a fixed
  order), and split into training and held-out questions by the same text hash as sentences.
"""

from __future__ import annotations

from functools import lru_cache

from aero.data.synth.text import Sentence, is_heldout, number_words

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Ireland": "Dublin",
    "Russia": "Moscow",
    "China": "Beijing",
    "India": "New Delhi",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Australia": "Canberra",
    "Austria": "Vienna",
    "Belgium": "Brussels",
    "Denmark": "Copenhagen",
    "Finland": "Helsinki",
    "Hungary": "Budapest",
    "Turkey": "Ankara",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Iran": "Tehran",
    "Nigeria": "Abuja",
    "Morocco": "Rabat",
    "Switzerland": "Bern",
    "Netherlands": "Amsterdam",
    "South Korea": "Seoul",
    "Indonesia": "Jakarta",
    "Colombia": "Bogota",
}
WORDS = [
    "happy",
    "generous",
    "ancient",
    "brave",
    "curious",
    "fragile",
    "gentle",
    "honest",
    "huge",
    "lazy",
    "loud",
    "narrow",
    "polite",
    "rapid",
    "silent",
    "tiny",
    "vivid",
    "wise",
    "humble",
    "eager",
    "calm",
    "bitter",
    "clever",
    "fierce",
    "hollow",
    "modest",
    "noble",
    "rare",
    "steady",
    "anxious",
    "bold",
    "cheerful",
    "clumsy",
    "delicate",
    "elegant",
    "famous",
    "grateful",
    "hungry",
    "jealous",
    "loyal",
    "nervous",
    "patient",
    "proud",
    "rough",
    "shy",
    "stubborn",
    "tender",
    "weary",
]
NOUNS = [
    "river",
    "mountain",
    "library",
    "bicycle",
    "kitchen",
    "garden",
    "window",
    "doctor",
    "teacher",
    "volcano",
    "planet",
    "ocean",
    "forest",
    "island",
    "desert",
    "bridge",
    "castle",
    "harbor",
    "orchestra",
    "umbrella",
    "telescope",
    "microscope",
    "battery",
    "compass",
    "calendar",
    "museum",
    "airport",
    "hospital",
    "factory",
    "village",
]
OPPOSITES = [
    "hot",
    "big",
    "fast",
    "happy",
    "light",
    "early",
    "full",
    "hard",
    "open",
    "strong",
    "rich",
    "young",
    "loud",
    "wet",
    "thick",
    "deep",
    "high",
    "long",
    "clean",
    "cheap",
]
ANIMALS = [
    "cat",
    "dog",
    "horse",
    "cow",
    "elephant",
    "lion",
    "tiger",
    "bear",
    "rabbit",
    "eagle",
    "owl",
    "dolphin",
    "whale",
    "shark",
    "frog",
    "snake",
    "spider",
    "bee",
    "ant",
    "penguin",
    "camel",
    "giraffe",
    "zebra",
    "monkey",
    "kangaroo",
    "octopus",
    "turtle",
    "goat",
    "sheep",
    "duck",
]
PLURAL_NOUNS = [
    "child",
    "mouse",
    "goose",
    "tooth",
    "foot",
    "woman",
    "box",
    "city",
    "leaf",
    "knife",
    "wolf",
    "baby",
    "story",
    "bus",
    "dish",
]
GENERAL = [
    "How many days are in a week?",
    "What color is the sky on a clear day?",
    "Name three fruits.",
    "Give me one tip for sleeping better.",
    "What do bees make?",
    "Why do leaves change color in autumn?",
    "How many hours are in a day?",
    "What is the largest planet in our solar system?",
    "What is the boiling point of water in Celsius?",
    "Name a primary color.",
    "What do plants need to grow?",
    "Suggest a name for a pet goldfish.",
    "Give me a simple recipe idea for breakfast.",
    "What is the tallest mountain in the world?",
    "How many continents are there?",
    "What language is spoken in Brazil?",
    "Write a short greeting for a birthday card.",
    "What is the freezing point of water in Fahrenheit?",
    "Name two musical instruments.",
    "How do I make a cup of tea?",
    "What is photosynthesis?",
    "Why is exercise good for you?",
    "What is the main ingredient of bread?",
    "Which season comes after winter?",
    "How many months have thirty days?",
    "What is the chemical symbol for water?",
    "Give me a word that rhymes with cat.",
    "Tell me a fun fact about the moon.",
    "What is the speed of light?",
    "Who wrote Romeo and Juliet?",
    "What is the longest river in the world?",
    "Give me three tips for studying.",
    "What should I pack for a day at the beach?",
    "How can I save money on groceries?",
    "What is the difference between weather and climate?",
    "Describe a rainbow in one sentence.",
    "What is gravity?",
    "Why do we need sleep?",
    "What are the three states of matter?",
    "Name a famous painter.",
    "What is a noun?",
    "How do you say hello in Spanish?",
    "Write a haiku about the sea.",
    "What is the sun made of?",
    "Give me an idea for a weekend hobby.",
    "What is the capital of the United States?",
    "How many sides does a triangle have?",
    "What is an adjective?",
    "Why is the ocean salty?",
    "What animal is known as the king of the jungle?",
    "Tell me a short joke.",
    "What is a healthy snack?",
    "How does a rainbow form?",
    "What is the opposite of north?",
    "How many minutes are in an hour?",
    "Name a vegetable that is green.",
    "What is a computer?",
    "How do airplanes fly?",
    "Recommend a good habit to start the day.",
    "What is recycling?",
]


def _arith(a: int, op: str, b: int) -> Sentence:
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    return Sentence(
        f"What is {a} {word} {b}?",
        f"What is {number_words(a)} {word} {number_words(b)}?",
        f"question:arithmetic-{word}",
    )


@lru_cache(maxsize=1)
def question_pool() -> tuple[Sentence, ...]:
    qs: list[Sentence] = []
    qs += [_arith(a, "+", b) for a in range(1, 11) for b in range(1, 11)]
    qs += [_arith(a, "-", b) for a in range(2, 13) for b in range(1, a)]
    qs += [_arith(a, "*", b) for a in range(2, 10) for b in range(2, 10)]
    qs += [
        Sentence(f"What is the capital of {c}?", f"What is the capital of {c}?", "question:capital")
        for c in CAPITALS
    ]
    qs += [
        Sentence(
            f"What does the word {w} mean?", f"What does the word {w} mean?", "question:definition"
        )
        for w in WORDS
    ]
    qs += [Sentence(f"What is a {n}?", f"What is a {n}?", "question:definition") for n in NOUNS]
    qs += [
        Sentence(
            f"What is the opposite of {w}?", f"What is the opposite of {w}?", "question:opposite"
        )
        for w in OPPOSITES
    ]
    qs += [
        Sentence(
            f"Tell me one fact about the {a}.", f"Tell me one fact about the {a}.", "question:fact"
        )
        for a in ANIMALS
    ]
    qs += [
        Sentence(
            f"How many legs does a {a} have?", f"How many legs does a {a} have?", "question:legs"
        )
        for a in ANIMALS
    ]
    qs += [
        Sentence(f"Give me a synonym for {w}.", f"Give me a synonym for {w}.", "question:synonym")
        for w in WORDS
    ]
    qs += [
        Sentence(f"Where does a {a} live?", f"Where does a {a} live?", "question:habitat")
        for a in ANIMALS
    ]
    qs += [
        Sentence(f"What does a {a} eat?", f"What does a {a} eat?", "question:diet") for a in ANIMALS
    ]
    qs += [
        Sentence(f"What is a {n} used for?", f"What is a {n} used for?", "question:use")
        for n in NOUNS
    ]
    qs += [
        Sentence(f"What is the plural of {n}?", f"What is the plural of {n}?", "question:plural")
        for n in PLURAL_NOUNS
    ]
    qs += [Sentence(q, q, "question:general") for q in GENERAL]
    return tuple(qs)


QUESTION_HELDOUT_PERCENT = 20  # of ~600 questions: ~120 held out, enough for a 100-question set


def questions(heldout: bool) -> list[Sentence]:
    return [q for q in question_pool() if is_heldout(q.text, QUESTION_HELDOUT_PERCENT) == heldout]
