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
