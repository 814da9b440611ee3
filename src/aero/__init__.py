"""Aero-1-Audio: a compact audio-language model."""
