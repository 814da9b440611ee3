"""Multiple-choice tasks: prompt, letter parser, item loading (MMAU / AIR-Bench spellings),
accuracy."""

import json

import pytest

from aero.evaluation.choice import build_prompt, load_choice_items, parse_choice, score_choices

FOUR = ["dog barking", "cat meowing", "rain", "thunder"]
SIX = ["piano", "violin", "drums", "flute", "guitar", "trumpet"]


def test_prompt_lists_lettered_options_then_instruction():
    assert build_prompt("What is heard? ", ["rain", "wind"]) == (
        "What is heard?\nA. rain\nB. wind\n"
        "Answer with the option's letter from the given choices directly."
    )
    with pytest.raises(ValueError, match="2 to 26"):
        build_prompt("q", ["only"])


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", 1),
        ("(B)", 1),
        ("B.", 1),
        ("b", 1),
        ("[C]", 2),
        ("The answer is C", 2),
        ("The answer is C because it rumbles.", 2),
        ("answer: d", 3),
        ("The correct option is (A).", 0),
        ("B. cat meowing", 1),
        ("Cat meowing.", 1),  # the option text itself
        ("I think it is rain", 2),  # a single option text inside the reply
        ("The answer is a cat", None),  # "a" is an article here, not option A
        ("The answer is a cat meowing", 1),
        ("I don't know", None),
        ("It sounds like a trumpet", None),  # no letter, no option
        ("", None),
        ("E", None),  # out of range for four options
    ],
)
def test_parse_choice_four_options(reply, expected):
    assert parse_choice(reply, FOUR) == expected


def test_parse_choice_more_than_four_options():
    assert parse_choice("F", SIX) == 5
    assert parse_choice("(E)", SIX) == 4
    assert parse_choice("The answer is F.", SIX) == 5
    assert parse_choice("trumpet", SIX) == 5
    assert parse_choice("G", SIX) is None


def test_parse_choice_prefers_the_most_specific_option_text():
    assert parse_choice("a hot dog sizzling", ["dog", "hot dog sizzling", "fire"]) == 1


def test_load_mmau_and_airbench_styles(tmp_path):
    mmau = [
        {
            "id": "m1",
            "audio_id": "./a/1.wav",
            "question": "Which?",
            "choices": ["x", "y", "z"],
            "answer": "z",
            "task": "sound",
        },
        {
            "id": "m2",
            "audio_id": "/abs/2.wav",
            "question": "Which?",
            "choices": ["x", "y"],
            "answer": "(B)",
            "task": "music",
        },
    ]
    (tmp_path / "mmau.json").write_text(json.dumps(mmau))
    items = load_choice_items(tmp_path / "mmau.json")
    assert [(i.id, i.answer, i.category) for i in items] == [("m1", 2, "sound"), ("m2", 1, "music")]
    assert items[0].audio == str(tmp_path / "a" / "1.wav") and items[1].audio == "/abs/2.wav"

    air = {
        "uniq_id": 7,
        "path": "b.wav",
        "question": "Q",
        "choice_a": "p",
        "choice_b": "q",
        "choice_c": "r",
        "answer_gt": "q",
        "task_name": "Speaker_Gender",
    }
    (tmp_path / "air.jsonl").write_text(json.dumps(air) + "\n")
    (item,) = load_choice_items(tmp_path / "air.jsonl")
    assert (
        item.choices == ("p", "q", "r")
        and item.answer == 1
        and item.id == "7"
        and item.category == "Speaker_Gender"
    )


def test_load_errors_name_the_item(tmp_path):
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"audio": "a.wav", "question": "Q", "choices": ["x", "y"], "answer": "x"})
        + "\n"
        + json.dumps({"audio": "a.wav", "question": "Q", "choices": ["x", "y"], "answer": "w"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: answer 'w'"):
        load_choice_items(tmp_path / "bad.jsonl")


def test_accuracy_per_category(tmp_path):
    rows = [
        {"audio": "a.wav", "question": "Q", "choices": ["x", "y"], "answer": a, "category": c}
        for a, c in [("x", "sound"), ("y", "sound"), ("x", "music"), ("y", "music")]
    ]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    items = load_choice_items(tmp_path / "q.json")
    score = score_choices([0, 0, 0, None], items)
    assert (score.n, score.correct, score.n_unparsed) == (4, 2, 1)
    assert score.accuracy == 0.5
    assert score.per_category["sound"].accuracy == 0.5 and score.per_category["music"].correct == 1
