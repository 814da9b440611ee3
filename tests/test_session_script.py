"""scripts/aero_mini_v2.py: where the next training session goes on from."""

import pytest

from conftest import load_script


def session_script():
    return load_script("aero_mini_v2")


def test_a_kept_candidate_comes_before_the_shipped_adapter(tmp_path, monkeypatch):
    script = session_script()
    candidate = tmp_path / "adapter.safetensors"
    monkeypatch.setattr(script, "CANDIDATE", candidate)
    monkeypatch.setattr(script, "shipped_is_v2", lambda: True)
    assert script.latest_v2() == script.ADAPTER_FILE
    candidate.write_bytes(b"")
    assert script.latest_v2() == candidate
    candidate.unlink()
    monkeypatch.setattr(script, "shipped_is_v2", lambda: False)
    assert script.latest_v2() is None


def test_the_kept_candidate_continues_the_shipped_lineage():
    script = session_script()
    if not script.CANDIDATE.is_file():
        pytest.skip("no candidate kept: the next session goes on from the shipped adapter")
    shipped, candidate = script.lineage_of(script.ADAPTER_FILE), script.lineage_of(script.CANDIDATE)
    assert len(candidate) > len(shipped)
    assert candidate[: len(shipped)] == shipped
    seeds = {record["seed"] for leg in shipped for record in leg["data"]}
    assert all(
        record["seed"] not in seeds for leg in candidate[len(shipped) :] for record in leg["data"]
    )


def test_verdict_ships_keeps_or_drops_as_sessions_8_and_9_decided():
    verdict = session_script().verdict
    shipped = {"espeak": 29.3, "slt": 23.7, "instruct": 42.3, "understanding": 38.3}
    session_8 = {"espeak": 28.7, "slt": 23.1, "instruct": 37.1, "understanding": 45.0}
    session_9 = {"espeak": 29.8, "slt": 22.2, "instruct": 35.0, "understanding": 40.8}
    # session 8: behind on instructions only, no candidate kept yet -> the candidate
    assert verdict(session_8, shipped, None) == "candidate"
    # session 9: better slt but behind on espeak and instructions -> the candidate stays
    assert verdict(session_9, shipped, session_8) == "keep"
    # ahead on all four -> shipped, whatever the candidate
    ahead = session_8 | {"instruct": 42.3}
    assert verdict(ahead, shipped, session_8) == "ship"
    # as many conditions met as the candidate: the lower short-set WER wins
    assert verdict(session_8 | {"slt": 22.0}, shipped, session_8) == "candidate"
    assert verdict(session_8 | {"slt": 23.5}, shipped, session_8) == "keep"


def test_an_answer_figure_behind_within_the_paired_interval_counts_as_no_worse():
    verdict = session_script().verdict
    shipped = {"espeak": 29.3, "slt": 23.7, "instruct": 42.3, "understanding": 38.3}
    behind = {"espeak": 28.5, "slt": 22.9, "instruct": 38.2, "understanding": 44.2}
    # 4.1 F1 points behind: not shipped when the paired interval stays below zero ...
    assert verdict(behind | {"instruct_gap_high": -0.4}, shipped, None) == "candidate"
    # ... shipped when it reaches zero (the held-out set cannot tell the two apart)
    assert verdict(behind | {"instruct_gap_high": 0.7}, shipped, None) == "ship"
    # the WER conditions have no such allowance
    assert verdict(behind | {"slt": 23.8, "instruct_gap_high": 0.7}, shipped, None) != "ship"
