"""The slow-down registry (fhirplatform/slowdown.py): delays are kept only where a worker
honours them, per connection, the longest one, and taken once."""

import socket

import pytest

from fhirplatform import slowdown


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    yield left
    left.close()
    right.close()


def test_nothing_is_kept_without_a_worker_that_honours_it(pair, monkeypatch):
    monkeypatch.setattr(slowdown, "_enabled", False)
    slowdown.connection_slow_down({"gunicorn.socket": pair}, 0.5)
    assert slowdown.connection_delay_take(pair) == 0.0


def test_the_longest_delay_is_taken_once(pair, monkeypatch):
    monkeypatch.setattr(slowdown, "_enabled", True)
    environ = {"gunicorn.socket": pair}
    slowdown.connection_slow_down(environ, 0.2)
    slowdown.connection_slow_down(environ, 0.5)
    slowdown.connection_slow_down(environ, 0.1)
    slowdown.connection_slow_down({}, 0.5)  # not served by gunicorn: nothing to slow
    assert slowdown.connection_delay_take(pair) == 0.5
    assert slowdown.connection_delay_take(pair) == 0.0
