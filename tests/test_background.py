"""The background tasks' pure rules."""

from __future__ import annotations

from gateway.background import next_beat


def test_git_polls_keep_their_beat_whatever_a_fetch_takes() -> None:
    assert next_beat(100.0, 30.0, 100.0) == 130.0
    assert next_beat(100.0, 30.0, 129.9) == 130.0  # a slow fetch does not shift the beat
    assert next_beat(100.0, 30.0, 131.0) == 160.0  # one that overran skips to the next beat
    assert next_beat(100.0, 30.0, 191.0) == 220.0
