"""Redis error replies that mean "not now" are unavailability, not refusals.

A settlement that meets a refusal (`StoreError`) is given up and left for `weir audit`; one
that meets unavailability is retried until the store answers. Redis answering `LOADING`
while it reloads its dataset after a restart was taken for a refusal, and the capture was
lost (seen in test_store_faults.py::test_redis_restart_mid_run_then_script_flush). No Redis
is needed: the translations are applied to the errors the clients raise.
"""

from __future__ import annotations

import pytest
from redis import exceptions as rexc

from proxy.store.base import StoreError, StoreUnavailable
from proxy.store.redis_core import translate
from proxy.store.redis_lean import _TRANSLATED
from proxy.store.resp import RespError

TRANSIENT = [
    "LOADING Redis is loading the dataset in memory",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "READONLY You can't write against a read only replica.",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "NOREPLICAS Not enough good replicas to write.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
]
DEFINITIVE = ["weir: unknown hold 'r1'", "ERR wrong number of arguments", "BUSYKEY Target key name already exists."]


@pytest.mark.parametrize("reply", TRANSIENT + DEFINITIVE)
def test_lean_client_replies(reply: str) -> None:
    """The lean RESP path (captures and holds on a single server)."""
    with pytest.raises(StoreError) as err:
        with _TRANSLATED:
            raise RespError(reply)
    assert isinstance(err.value, StoreUnavailable) is (reply in TRANSIENT), err.value


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (rexc.ReadOnlyError("You can't write against a read only replica."), True),
        (rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (rexc.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (rexc.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's unable to persist"), True),
        (rexc.ResponseError("BUSY Redis is busy running a script."), True),
        (rexc.ResponseError("weir: unknown hold 'r1'"), False),
        (rexc.ResponseError("BUSYKEY Target key name already exists."), False),
    ],
    ids=lambda v: str(v)[:12] if isinstance(v, Exception) else str(v),
)
def test_redis_py_replies(exc: Exception, unavailable: bool) -> None:
    """The redis-py path (everything else, and clusters)."""
    with pytest.raises(StoreError) as err:
        with translate():
            raise exc
    assert isinstance(err.value, StoreUnavailable) is unavailable, err.value
