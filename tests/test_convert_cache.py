"""The conversion cache: atomic entries keyed by the source file, env/argument overrides."""

import json
import os

import pytest

from aero.convert.cache import SOURCE_FILE, cache_root, cached_conversion


def writer(calls):
    def convert(directory):
        calls.append(directory)
        (directory / "weights.txt").write_text("converted")

    return convert


def test_second_call_hits_the_cache(tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"abc")
    calls = []
    first = cached_conversion("thing", source, 1, writer(calls), tmp_path / "cache")
    second = cached_conversion("thing", source, 1, writer(calls), tmp_path / "cache")
    assert first == second and len(calls) == 1
    assert (first / "weights.txt").read_text() == "converted"
    record = json.loads((first / SOURCE_FILE).read_text())
    assert (
        record["source"] == str(source) and record["size"] == 3 and record["converter_version"] == 1
    )


def test_changed_source_or_version_reconverts_and_drops_the_stale_entry(tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"abc")
    calls = []
    old = cached_conversion("thing", source, 1, writer(calls), tmp_path)
    newer = cached_conversion("thing", source, 2, writer(calls), tmp_path)
    assert newer != old and not old.exists() and len(calls) == 2
    source.write_bytes(b"abcd")  # a reinstalled package: new size and mtime
    latest = cached_conversion("thing", source, 2, writer(calls), tmp_path)
    assert latest != newer and not newer.exists() and len(calls) == 3


def test_another_installations_entry_stays_until_its_source_is_gone(tmp_path):
    first_env, second_env = tmp_path / "venv-a" / "model.bin", tmp_path / "venv-b" / "model.bin"
    for source in (first_env, second_env):
        source.parent.mkdir()
        source.write_bytes(b"abc")
    calls = []
    a = cached_conversion("thing", first_env, 1, writer(calls), tmp_path / "cache")
    b = cached_conversion("thing", second_env, 1, writer(calls), tmp_path / "cache")
    assert a != b and a.exists() and b.exists()
    assert (
        cached_conversion("thing", first_env, 1, writer(calls), tmp_path / "cache") == a
        and len(calls) == 2
    )
    second_env.unlink()  # that environment was removed: its entry goes with the next conversion
    first_env.write_bytes(b"abcd")
    latest = cached_conversion("thing", first_env, 1, writer(calls), tmp_path / "cache")
    assert latest.exists() and not a.exists() and not b.exists() and len(calls) == 3


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"abc")

    def broken(directory):
        (directory / "half.txt").write_text("partial")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        cached_conversion("thing", source, 1, broken, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    calls = []
    entry = cached_conversion("thing", source, 1, writer(calls), tmp_path / "cache")
    assert len(calls) == 1 and (entry / SOURCE_FILE).is_file()


def test_cache_root_argument_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("AERO_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "aero"
    assert os.fspath(cache_root()).endswith(os.path.join(".cache", "aero"))
