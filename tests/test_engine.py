"""The generation engine on a tiny random model: batching, streaming, the repetition guard."""

import numpy as np
import pytest
import soundfile as sf
import torch

from aero.audio import SAMPLE_RATE, AudioError
from aero.decoding import (
    FALLBACK_TEMPERATURES,
    Decoder,
    GenerationOptions,
    LoopTokens,
    NgramBan,
    loop_start,
    repeated_ngram,
)
from aero.engine import ContextLengthError, Engine, model_facts
from conftest import make_looping_model, make_tiny_model, make_tiny_processor, tone

GREEDY = GenerationOptions(max_new_tokens=12, repetition_guard=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models run faster on one thread, and the CI machine's cores are shared.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def engine():
    return Engine(make_tiny_model(), make_tiny_processor(), batch_size=3)


def clips():
    return [
        tone(s, 200 + 60 * i, seed=i) for i, s in enumerate([1.0, 4.5, 0.3, 7.0, 2.0, 33.0, 1.5])
    ]


def test_batches_equal_one_by_one(engine):
    audios = clips()
    batched = engine.transcribe(audios, options=GREEDY)
    assert len(engine.batches([engine.prepare([{"role": "user", "content": "x"}])] * 7)) == 3
    for audio, result in zip(audios, batched):
        alone = engine.transcribe([audio], options=GREEDY)[0]
        assert result.token_ids == alone.token_ids and result.text == alone.text
        assert result.duration == pytest.approx(len(audio) / SAMPLE_RATE)
        assert result.finish_reason == "length" and len(result.token_ids) == 12
    assert batched[5].audios[0].windows == [(0, 30), (30, pytest.approx(33.0))]


def test_transcribe_sends_the_processors_prompt_unless_given_one():
    engine = Engine(
        make_tiny_model(), make_tiny_processor(transcribe_prompt="Write down the words.")
    )
    audio = tone(1.5)
    default, given = (
        engine.transcribe([audio], options=GREEDY)[0],
        engine.transcribe([audio], "Write down the words.", GREEDY)[0],
    )
    other = engine.transcribe([audio], "Please transcribe the audio", GREEDY)[0]
    assert default.token_ids == given.token_ids and default.prompt_tokens == given.prompt_tokens
    assert other.prompt_tokens != default.prompt_tokens
    assert "Write down the words." in model_facts(engine)["transcription prompt"]


def test_stream_joins_to_text(engine):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": tone(2.0)},
                {"type": "text", "text": "What is it?"},
            ],
        }
    ]
    stream = engine.stream(engine.prepare(messages, GREEDY), GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.result.text
    assert stream.result.text == engine.chat(messages, GREEDY).text


def test_decoder_steps_give_every_token_and_results_hold_the_replies(engine):
    messages = [engine.processor.transcription_messages(c) for c in clips()[:3]]
    prepared = [engine.prepare(m, GREEDY, transcription=True) for m in messages]
    prefill = lambda rows: engine._prefill([prepared[r] for r in rows])
    limits = [p.max_new_tokens for p in prepared]
    decoder = Decoder(engine.model.language_model, prefill, limits, engine.eos_ids, GREEDY)
    assert decoder.results is None  # nothing decoded before the first step
    tokens: list[list[int]] = [[], [], []]
    for step in decoder.steps():
        for row, token in step:
            tokens[row].append(token)
    replies = [d.token_ids for d in decoder.results]
    assert replies == [[t for t in row if t not in engine.eos_ids] for row in tokens]
    assert replies == [r.token_ids for r in engine.generate_all(prepared, GREEDY)]


def test_repetition_guard_stops_a_forced_loop():
    model = make_looping_model()
    engine = Engine(model, make_tiny_processor())
    cut = engine.transcribe([tone(1.0)], options=GenerationOptions(max_new_tokens=500))[0]
    assert cut.stopped_by_repetition and cut.finish_reason == "repetition"
    assert cut.token_ids == [0]  # the loop is cut back to its first copy
    # with every 3-gram allowed once, the same model cannot loop: it runs to its budget
    banned = engine.transcribe(
        [tone(1.0)], options=GenerationOptions(max_new_tokens=60, no_repeat_ngram_size=3)
    )[0]
    grams = [tuple(banned.token_ids[i : i + 3]) for i in range(58)]
    assert (
        banned.finish_reason == "length"
        and len(banned.token_ids) == 60
        and len(set(grams)) == len(grams)
    )
    off = engine.transcribe(
        [tone(1.0)], options=GenerationOptions(max_new_tokens=50, repetition_guard=False)
    )[0]
    assert off.finish_reason == "length" and off.token_ids == [0] * 50


def test_temperature_fallback_replaces_a_looping_reply_and_keeps_the_rest(engine):
    model = make_looping_model()
    looping = Engine(model, make_tiny_processor())
    options = GenerationOptions(max_new_tokens=60, fallback_temperatures=FALLBACK_TEMPERATURES)
    first, second = looping.transcribe([tone(1.0), tone(2.0, seed=1)], options=options)
    assert (
        first.temperature == 0.2 and first.finish_reason == "length" and len(first.token_ids) == 60
    )
    assert second.temperature == 0.2 and not second.stopped_by_repetition
    again = looping.transcribe([tone(1.0), tone(2.0, seed=1)], options=options)
    assert [r.token_ids for r in again] == [
        first.token_ids,
        second.token_ids,
    ]  # seeded: the same request repeats
    assert (
        looping.chat(
            [{"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}]}], options
        ).temperature
        == 0.2
    )

    # a reply that loops at every temperature keeps the greedy decode, cut at its loop
    stuck = make_tiny_model()
    stuck.language_model.lm_head.register_forward_hook(
        lambda module, args, logits: logits.index_fill_(-1, torch.tensor([0]), 1e4)
    )
    kept = Engine(stuck, make_tiny_processor()).transcribe([tone(1.0)], options=options)[0]
    assert kept.stopped_by_repetition and kept.temperature == 0.0 and kept.token_ids == [0]

    # replies without a loop are untouched
    plain = GenerationOptions(max_new_tokens=12)
    with_fallback = GenerationOptions(max_new_tokens=12, fallback_temperatures=(0.5,))
    assert [r.text for r in engine.transcribe(clips(), options=plain)] == [
        r.text for r in engine.transcribe(clips(), options=with_fallback)
    ]


class Scripted(torch.nn.Module):
    """The tiny LM with its logits replaced: first step 10 (logit 2.0) or 11 (1.5); after 10, ten
    equally likely tokens 20-29; after anything else, the end of turn. Greedy takes 10 and then a
    1-in-10 guess; a beam of 2 finds 11 + end, the better mean log-probability."""

    def __init__(self, lm, eos):
        super().__init__()
        self.lm, self.config, self.eos = lm, lm.config, eos

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def forward(self, input_ids=None, **kwargs):
        out = self.lm(input_ids=input_ids, **kwargs)
        logits = torch.full_like(out.logits, -30.0)
        for row in range(logits.shape[0]):
            if input_ids is None:
                logits[row, -1, 10], logits[row, -1, 11] = 2.0, 1.5
            elif int(input_ids[row, -1]) == 10:
                logits[row, -1, 20:30] = 0.0
            else:
                logits[row, -1, self.eos] = 10.0
        out.logits = logits
        return out


def test_beam_search_finds_the_better_hypothesis_greedy_misses():
    model, processor = make_tiny_model(), make_tiny_processor()
    model.language_model = Scripted(model.language_model, processor.tokenizer.eos_token_id)
    engine = Engine(model, processor)
    greedy = engine.transcribe([tone(1.0)], options=GenerationOptions(max_new_tokens=8))[0]
    assert greedy.token_ids == [10, 20] and greedy.finish_reason == "stop"
    beam = engine.transcribe([tone(1.0)], options=GenerationOptions(max_new_tokens=8, num_beams=2))[
        0
    ]
    assert beam.token_ids == [11] and beam.finish_reason == "stop"
    one_token = engine.transcribe(
        [tone(1.0)], options=GenerationOptions(max_new_tokens=1, num_beams=2)
    )[0]
    assert one_token.finish_reason == "length" and one_token.token_ids == [10]
    with pytest.raises(ValueError, match="num_beams"):
        GenerationOptions(num_beams=2, temperature=0.5)


def test_beam_search_runs_on_a_real_batch_and_cuts_loops(engine):
    options = GenerationOptions(max_new_tokens=12, num_beams=3)
    results = engine.transcribe(clips()[:3], options=options)
    assert all(r.token_ids and r.finish_reason in ("stop", "length", "repetition") for r in results)
    assert [r.text for r in results] == [
        engine.transcribe([c], options=options)[0].text for c in clips()[:3]
    ]
    model = make_looping_model()
    looping = Engine(model, make_tiny_processor()).transcribe(
        [tone(1.0)], options=GenerationOptions(max_new_tokens=200, num_beams=2)
    )[0]
    assert len(looping.token_ids) < 200  # ties everywhere: the guard ends the looping beams


def test_repeated_ngram_rules():
    options = GenerationOptions()  # n-grams up to 128, >= 4 copies spanning >= 32 tokens
    assert repeated_ngram([7] * 31, options) == 0 and repeated_ngram([7] * 32, options) == 1
    loop = [1, 2, 3] + [5, 6, 7, 8, 9] * 7  # 35 tokens of a 5-gram
    assert repeated_ngram(loop, options) == 5 and loop_start(loop, 5) == 8
    sentence = list(range(100, 180))  # an 80-token sentence said over and over, as aero-mini did
    assert repeated_ngram([1, 2] + sentence * 3, options) == 0  # 3 copies: not yet a loop
    assert repeated_ngram([1, 2] + sentence * 4, options) == 80
    assert repeated_ngram([1, 2] + sentence * 4, GenerationOptions(repetition_max_ngram=16)) == 0
    assert repeated_ngram([5, 6, 7, 8, 9] * 6, options) == 0  # 30 tokens: not yet a loop
    assert repeated_ngram(list(range(40)), options) == 0


def test_a_loop_whose_numbers_change_is_a_loop_but_counting_is_not():
    """With the tokenizer's numerals, "... in 1902. ... in 1903." stops as a loop; someone
    counting aloud ("1, 2, 3, ...") does not, and neither does ordinary text."""
    tokenizer = make_tiny_processor().tokenizer
    same = LoopTokens.of(tokenizer)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    years = ids("".join(f" It was built in {1900 + k}." for k in range(8)))
    options = GenerationOptions()
    assert repeated_ngram(years, options) == 0  # no two copies are the same ids
    n = repeated_ngram(years, options, same)
    assert n > 0 and tokenizer.decode(years[: loop_start(years, n, same)]).strip() == (
        "It was built in 1900."
    )
    counting = ids(", ".join(str(k) for k in range(1, 60)))
    assert repeated_ngram(counting, options, same) == 0
    prose = ids("The 3 men walked 12 miles in 4 hours, and 7 more came to join them at 9.")
    assert repeated_ngram(prose, options, same) == 0


def test_context_limit_is_an_error_not_truncation():
    engine = Engine(make_tiny_model(text={"max_position_embeddings": 512}), make_tiny_processor())
    with pytest.raises(ContextLengthError, match=r"33\.0 s of audio.*at most ~1[0-9] s") as err:
        engine.transcribe([tone(33.0)])
    assert "needs -" not in str(err.value) and "0 left for the reply" in str(err.value)
    with pytest.raises(ContextLengthError, match="lower max_new_tokens"):
        engine.transcribe([tone(5.0)], options=GenerationOptions(max_new_tokens=400))
    assert (
        engine.transcribe([tone(5.0)], options=GenerationOptions(max_new_tokens=4))[
            0
        ].completion_tokens
        <= 4
    )


def test_timestamps_one_segment_per_window(engine):
    result = engine.transcribe([tone(65.0)], options=GREEDY, timestamps=True)[0]
    assert [(s.start, s.end) for s in result.segments] == [
        (0, 30),
        (30, 60),
        (60, pytest.approx(65.0)),
    ]
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    first = engine.transcribe([tone(65.0)[: 30 * SAMPLE_RATE]], options=GREEDY)[0]
    assert result.segments[0].text == first.text


def test_failed_file_does_not_stop_the_rest(engine, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(1.0), SAMPLE_RATE)
    (tmp_path / "bad.wav").write_text("not audio")
    out = dict(
        engine.transcribe_iter(
            [str(tmp_path / "bad.wav"), str(good), str(tmp_path / "missing.wav")], options=GREEDY
        )
    )
    assert (
        isinstance(out[0], AudioError)
        and isinstance(out[2], AudioError)
        and "does not exist" in str(out[2])
    )
    assert out[1].text == engine.transcribe([tone(1.0)], options=GREEDY)[0].text


def test_sampling_is_seeded_and_top_p_small_is_greedy(engine):
    audio = [tone(1.0)]
    sample = GenerationOptions(max_new_tokens=10, temperature=1.0, seed=3, repetition_guard=False)
    assert (
        engine.transcribe(audio, options=sample)[0].token_ids
        == engine.transcribe(audio, options=sample)[0].token_ids
    )
    nucleus = GenerationOptions(
        max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=1, repetition_guard=False
    )
    greedy = GenerationOptions(max_new_tokens=10, repetition_guard=False)
    assert (
        engine.transcribe(audio, options=nucleus)[0].token_ids
        == engine.transcribe(audio, options=greedy)[0].token_ids
    )


def test_multi_turn_chat_with_two_audios(engine):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": tone(1.0)},
                {"type": "audio", "audio": tone(31.0, 300)},
                {"type": "text", "text": "Compare them."},
            ],
        },
        {"role": "assistant", "content": "The second is longer."},
        {"role": "user", "content": "By how much?"},
    ]
    result = engine.chat(messages, GREEDY)
    assert [a.duration for a in result.audios] == [pytest.approx(1.0), pytest.approx(31.0)]
    assert len(result.audios[1].windows) == 2 and result.completion_tokens == 12


def test_ngram_ban_matches_transformers_no_repeat_ngram():
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4):
        tokens = rng.integers(0, 5, size=40).tolist()  # a small vocabulary: many repeats
        ban, theirs = NgramBan(n), NoRepeatNGramLogitsProcessor(n)
        for t in range(len(tokens) + 1):
            ids = torch.tensor([tokens[:t]], dtype=torch.long)
            scores = theirs(ids, torch.zeros(1, 5)) if t else torch.zeros(1, 5)
            assert (
                sorted(set(ban.banned(tokens[:t])))
                == torch.isinf(scores[0]).nonzero().flatten().tolist()
            ), (n, t)
            if t < len(tokens):
                ban.add(tokens[: t + 1])


def test_no_repeat_ngram_size_holds_in_a_reply(engine):
    options = GenerationOptions(max_new_tokens=40, repetition_guard=False, no_repeat_ngram_size=2)
    result = engine.transcribe([tone(1.0)], options=options)[0]
    pairs = [tuple(result.token_ids[i : i + 2]) for i in range(len(result.token_ids) - 1)]
    assert len(pairs) == 39 and len(set(pairs)) == len(pairs)


def test_eos_stops_a_row():
    model, processor = make_tiny_model(), make_tiny_processor()
    eos = processor.tokenizer.eos_token_id

    def end_now(module, args, logits):  # the end-of-turn token always wins
        logits[..., eos] = 1e4
        return logits

    model.language_model.lm_head.register_forward_hook(end_now)
    result = Engine(model, processor).transcribe([tone(1.0)])[0]
    assert result.finish_reason == "stop" and result.token_ids == [] and result.text == ""


def test_options_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        GenerationOptions(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        GenerationOptions(top_p=0)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        GenerationOptions(no_repeat_ngram_size=-1)
    with pytest.raises(ValueError, match="fallback temperatures"):
        GenerationOptions(fallback_temperatures=(0.0, 0.5))
    with pytest.raises(ValueError, match="repetition guard"):
        GenerationOptions(fallback_temperatures=(0.5,), repetition_guard=False)
    assert GenerationOptions(fallback_temperatures=[0.2, 0.4]).fallback_temperatures == (0.2, 0.4)
    with pytest.raises(AttributeError):
        GenerationOptions().temperature = 1.0  # frozen


def test_int8_quantized_model_runs(engine):
    from aero.quantize import quantize_dynamic_int8

    model = quantize_dynamic_int8(make_tiny_model())
    assert not any(type(m) is torch.nn.Linear for m in model.language_model.modules())
    result = Engine(model, make_tiny_processor()).transcribe([tone(2.0)], options=GREEDY)[0]
    assert len(result.token_ids) == 12 and isinstance(result.text, str)


def test_array_bytes_and_path_sources_agree(engine, tmp_path):
    audio = tone(1.5)
    path = tmp_path / "a.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    results = engine.transcribe([audio, str(path), path.read_bytes()], options=GREEDY)
    assert len(results) == 3
    array, from_path, from_bytes = results
    assert len(array.token_ids) == 12  # max_new_tokens of real output, not three empty results
    assert from_path.token_ids == array.token_ids and from_bytes.token_ids == array.token_ids
    assert from_path.text == array.text and from_bytes.text == array.text
    # The outputs depend on the audio: another clip gives other tokens, so equal results above
    # mean the three sources decoded to the same samples.
    other = engine.transcribe([tone(1.5, 700.0, seed=3)], options=GREEDY)[0]
    assert other.token_ids != array.token_ids
