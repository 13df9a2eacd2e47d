"""Which Redis error replies are "try again" (unavailability) and which are definitive.

Both Redis clients (the lean RESP connection and redis-py, used for clusters and TLS) must
agree: a reply that says "not now" is `StoreUnavailable` (503 at hold time, retried at
settlement); anything else is a definitive `StoreError`.
"""

from __future__ import annotations

import pytest
import redis.exceptions as rexc
from redis._parsers.base import BaseParser

from plugins.billing.store.base import StoreError, StoreUnavailable
from plugins.billing.store.redis.client import _translated
from plugins.billing.store.redis.resp_commands import reply_error

TRY_AGAIN = [
    "LOADING Redis is loading the dataset in memory",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "READONLY You can't write against a read only replica.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "NOREPLICAS Not enough good replicas to write.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
]
DEFINITIVE = [
    "weir: unknown hold 'r1'",
    "ERR Error running script (call to f_123): @user_script:1: user_script:1: bad argument",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "BUSYKEY Target key name already exists.",
]


@pytest.mark.parametrize("reply", TRY_AGAIN)
def test_try_again_replies_are_unavailability_on_both_clients(reply: str) -> None:
    assert isinstance(reply_error(reply), StoreUnavailable)
    parsed = BaseParser.parse_error(reply)  # what redis-py raises for this reply
    assert isinstance(_translated(parsed), StoreUnavailable), type(parsed)


@pytest.mark.parametrize("reply", DEFINITIVE)
def test_other_replies_are_definitive_on_both_clients(reply: str) -> None:
    lean = reply_error(reply)
    assert type(lean) is StoreError
    parsed = BaseParser.parse_error(reply)
    assert type(_translated(parsed)) is StoreError
    if reply.startswith("weir: "):
        assert str(lean) == reply[6:]  # a script's own message, without its prefix


def test_a_lost_connection_is_unavailability() -> None:
    assert isinstance(_translated(rexc.ConnectionError("reset")), StoreUnavailable)
