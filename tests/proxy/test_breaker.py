"""The circuit breaker's states on a clock moved by hand, and its config checks."""

from __future__ import annotations

import pytest

from proxy.breaker import Breaker
from proxy.config import ConfigError, parse_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, cooldown: float = 30.0) -> tuple[Breaker, Clock, list[tuple[str, bool, bool]]]:
    clock = Clock()
    changes: list[tuple[str, bool, bool]] = []
    breaker = Breaker("up", failures, cooldown, clock=clock, on_change=lambda *c: changes.append(c))
    return breaker, clock, changes


def test_opens_after_n_consecutive_failures_only() -> None:
    b, _, changes = make()
    b.failure()
    b.failure()
    b.success()  # any answer resets the count
    b.failure()
    b.failure()
    assert not b.is_open and b.acquire() and changes == []
    b.failure()
    assert b.is_open and not b.admits() and not b.acquire()
    assert changes == [("up", True, True)]


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    b, clock, changes = make()
    for _ in range(3):
        b.failure()
    clock.now += 29.9
    assert not b.admits() and b.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.admits() and b.acquire()  # the probe
    assert not b.admits() and not b.acquire()  # the others keep skipping it meanwhile
    b.success()
    assert not b.is_open and b.acquire() and b.retry_in() == 0
    assert changes == [("up", True, True), ("up", False, False)]


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    b, clock, changes = make(failures=1, cooldown=10)
    b.failure()
    clock.now += 10
    assert b.acquire()
    b.failure()
    assert b.is_open and not b.admits() and b.retry_in() == 10
    assert changes == [("up", True, True), ("up", True, True)]  # two trips


def test_late_failures_while_open_do_not_extend_the_cooldown() -> None:
    b, clock, changes = make(failures=1, cooldown=10)
    b.failure()
    clock.now += 5
    b.failure()  # a request that started before the trip
    assert b.retry_in() == 5 and len(changes) == 1


def test_a_lost_probe_is_given_up_after_a_cooldown() -> None:
    b, clock, _ = make(failures=1, cooldown=10)
    b.failure()
    clock.now += 10
    assert b.acquire()  # this probe's request is cancelled and never reports
    clock.now += 9
    assert not b.acquire()
    clock.now += 1
    assert b.acquire()


def test_zero_failures_is_off() -> None:
    b, _, changes = make(failures=0)
    for _ in range(100):
        b.failure()
    assert not b.is_open and b.acquire() and changes == []


def test_config_defaults_and_errors() -> None:
    cfg = parse_config({"upstreams": [{"name": "a", "type": "mock", "breaker": {"failures": 2}}]}, env={})
    assert (cfg.routing.breaker.failures, cfg.routing.breaker.cooldown_s) == (5, 30.0)
    assert cfg.upstreams[0].breaker is not None and cfg.upstreams[0].breaker.cooldown_s == 30.0
    bad = [
        ({"routing": {"breaker": {"failures": -1}}}, "routing.breaker.failures"),
        ({"routing": {"breaker": {"cooldown_s": 0}}}, "routing.breaker.cooldown_s"),
        ({"routing": {"breaker": {"failure": 3}}}, "routing.breaker.failure: unknown key"),
        (
            {"upstreams": [{"name": "a", "type": "mock", "breaker": {"cooldown_s": -1}}]},
            "upstreams[0].breaker.cooldown_s",
        ),
    ]
    for data, where in bad:
        with pytest.raises(ConfigError) as err:
            parse_config(data, env={})
        assert str(err.value).startswith(where)
