"""RedisStore on a real Redis Cluster: three primaries started here, on free loopback ports.

The store contract (test_contract, test_funding, test_orphans, test_tasks, test_accounts: users,
credit, keys, holds, capture, release, checkpoints, orphans, logs, audit, subscriptions, async
tasks, account edits) and two races (the
200-holds race, resolutions racing the orphan sweep) are re-run on the cluster by importing
those tests and overriding their `backend` fixture; the tests written here check what only a cluster
has: users on different nodes, per-node NOSCRIPT, a slot moved under a live store, cluster
errors, and a client of the wrong kind. Skips when `redis-server`/`redis-cli` are missing,
unless WEIR_REQUIRE_REDIS=1.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.crc import key_slot

from plugins.billing.store.base import Hold, LogDetails, StoreError, StoreUnavailable
from plugins.billing.store.factory import make_store
from plugins.billing.store.redis.client import translate
from plugins.billing.store.redis.layout import Layout, load_script
from plugins.billing.store.redis.store import RedisStore
from proxy.config import parse_config
from tests.redis_server import redis_missing

from . import test_accounts, test_contract, test_funding, test_orphans, test_tasks
from .conftest import Backend, FakeClock
from .test_races import (  # noqa: F401
    test_200_concurrent_holds_exactly_37_fit,
    test_resolutions_racing_the_orphan_sweep_resolve_once,
)

# The whole contract (every test of these modules) runs again here, on the cluster `backend`
# below: pytest collects the test functions found in this module's namespace.
globals().update(
    {
        name: test
        for module in (test_contract, test_funding, test_orphans, test_tasks, test_accounts)
        for name, test in vars(module).items()
        if name.startswith("test_")
    }
)

DONE = LogDetails(end_reason="completed", usage_source="upstream", upstream="openai")


@dataclass(frozen=True, slots=True)
class LocalCluster:
    """Loopback Redis Cluster nodes started by this module (all primaries)."""

    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """The seed URL the store is given: the first node."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def owner(self, key: str) -> int:
        """The port of the node serving `key`'s slot, as the nodes themselves report it."""
        slot = key_slot(key.encode())
        for start, end, primary, *_ in _cmd(self.ports[0], "CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"slot {slot} is not served")


def _cmd(port: int, *args: object) -> Any:
    """One command on one node through a plain client, to look behind the store's back."""
    with redis.Redis(port=port, decode_responses=True, socket_timeout=5) as client:
        return client.execute_command(*args)


def _answers(port: int) -> bool:
    with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
        return bool(client.ping())


# --- starting and stopping redis-server -------------------------------------------------------


def _binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        redis_missing("redis-server and redis-cli are needed for the Redis Cluster tests")
    return server, cli


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports free for a node and for its cluster bus (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536 and port not in ports and _bindable(port + 10000):
            ports.append(port)
    return ports


def _wait(what: str, done: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if done():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        info = _cmd(port, "CLUSTER INFO")
        if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(ports):
            return False
    return True


Procs = list["subprocess.Popen[bytes]"]


def _stop(procs: Procs) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _start_nodes(
    server: str, folder: Path, ports: list[int], *, cluster: bool = True, node_timeout_ms: int = 15000
) -> Procs:
    """redis-server on each port (cluster mode unless told otherwise), once each answers.

    `node_timeout_ms` is how long a node may be silent before its peers suspect it. Long by
    default: on a busy machine a node can stall for seconds, and its peers would then fail it
    and the cluster would report CLUSTERDOWN in the middle of a test. Nothing here relies on
    failure detection."""
    procs: Procs = []
    for port in ports:
        argv = [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--logfile",
            f"redis-{port}.log",
        ]
        if cluster:
            argv += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
            ]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for port in ports:
            _wait(f"redis-server on {port}", functools.partial(_answers, port))
    except BaseException:
        _stop(procs)
        raise
    return procs


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three primaries joined by `redis-cli --cluster create`, killed at the end of the session."""
    server, cli = _binaries()
    folder, ports = tmp_path_factory.mktemp("redis-cluster"), _free_ports(3)
    procs = _start_nodes(server, folder, ports)
    try:
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        _wait("cluster_state:ok on every node", lambda: _cluster_ok(ports))
        yield LocalCluster(tuple(ports))
    finally:
        _stop(procs)


@pytest.fixture
def lone_node(tmp_path: Path) -> Iterator[LocalCluster]:
    """A one-node cluster serving every slot, for tests that break the cluster."""
    server, _ = _binaries()
    ports = _free_ports(1)
    # No peer can fail a lone node; the short timeout keeps its rejoin delay (the timeout,
    # within 0.5-5 s) after the cluster comes back short.
    procs = _start_nodes(server, tmp_path, ports, node_timeout_ms=2000)
    try:
        _cmd(ports[0], "CLUSTER ADDSLOTSRANGE", 0, 16383)
        _wait("cluster_state:ok", lambda: _cluster_ok(ports))
        yield LocalCluster(tuple(ports))
    finally:
        _stop(procs)


# --- the contract's backend, on the cluster ---------------------------------------------------


@pytest.fixture
async def backend(cluster: LocalCluster) -> AsyncIterator[Backend]:
    """Overrides conftest's `backend`: every imported contract test runs on the cluster."""
    prefix = f"weirtest:{uuid.uuid4().hex}"

    async def tamper(user: str, delta: int) -> None:
        client = aioredis.RedisCluster.from_url(cluster.url, decode_responses=True)
        try:
            await client.hincrby(Layout(prefix).user(user), "balance", delta)
        finally:
            await client.aclose()

    chosen = Backend(
        name="redis-cluster",
        make=lambda clock: RedisStore(cluster.url, prefix=prefix, clock=clock, cluster=True),
        tamper_wallet=tamper,
        spec=["redis-cluster", cluster.url, prefix],
        broken=lambda: RedisStore("redis://127.0.0.1:1/0", prefix=prefix, cluster=True),
    )
    yield chosen
    for peer in chosen.stores[1:]:
        await peer.close()
    if chosen.stores:
        first = chosen.stores[0]
        assert isinstance(first, RedisStore)
        await first.drop_all()
        await first.close()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix for one test."""
    return f"weirtest:{uuid.uuid4().hex}"


@pytest.fixture
async def cstore(cluster: LocalCluster, prefix: str, clock: FakeClock) -> AsyncIterator[RedisStore]:
    """An opened cluster store on `prefix`; dropped and closed afterwards."""
    store = RedisStore(cluster.url, prefix=prefix, clock=clock, cluster=True)
    await store.open()
    yield store
    await store.drop_all()
    await store.close()


def _keys_by_node(cluster: LocalCluster, prefix: str) -> dict[int, set[str]]:
    """Every key under `prefix`, by the node that physically holds it."""
    found: dict[int, set[str]] = {}
    for port in cluster.ports:
        with redis.Redis(port=port, decode_responses=True) as client:
            found[port] = set(client.scan_iter(match=f"{prefix}:*", count=500))
    return found


async def _funded_user(store: RedisStore, name: str, balance: int) -> str:
    await store.create_user(name)
    await store.credit(name, balance, "top-up")
    return (await store.create_key(name, f"hash-{name}-{uuid.uuid4().hex}", quota=balance // 2)).id


def _user_tag(prefix: str, name: str) -> str:
    """The start shared by every key of `name`: the prefix and the user's hash tag."""
    return Layout(prefix).user(name).rsplit(":", 1)[0]


def _spread_names(cluster: LocalCluster, prefix: str, count: int) -> list[str]:
    """`count` user names whose slots are served by at least two different nodes."""
    names = [f"user{i}" for i in range(count)]
    owners = {cluster.owner(Layout(prefix).user(n)) for n in names}
    assert len(owners) >= 2, f"all of {names} hash to one node; pick other names"
    return names


# --- what only a cluster has ------------------------------------------------------------------


async def test_users_spread_over_nodes_and_every_step_works_across_them(
    cluster: LocalCluster, cstore: RedisStore, prefix: str, clock: FakeClock
) -> None:
    names = _spread_names(cluster, prefix, 6)
    assert await cstore.ping()  # every primary reports the cluster ok
    await cstore.heartbeat("i1")
    for i, name in enumerate(names):
        key_id = await _funded_user(cstore, name, 1000)
        assert isinstance(await cstore.hold(f"{name}-a", name, key_id, 100, None, "pv", 60, "i1", "gpt-4o"), Hold)
        assert isinstance(await cstore.hold(f"{name}-b", name, key_id, 50, None, "pv", 60, "dead", "gpt-4o"), Hold)
        assert await cstore.checkpoint(f"{name}-b", 20)
        clock.advance(1)
        if i % 2:
            assert (await cstore.capture(f"{name}-a", 40 + i, DONE)).charged == 40 + i
        else:
            assert (await cstore.release(f"{name}-a", DONE)).charged == 0
    orphaned = await cstore.resolve_orphans(clock.now, 30)  # the "dead" instance never beat
    assert sorted(r.request_id for r in orphaned) == sorted(f"{n}-b" for n in names)
    assert all(r.charged == 20 for r in orphaned)

    by_node = _keys_by_node(cluster, prefix)
    for name in names:  # all of a user's keys sit on the node that serves its tag, and only there
        holders = {p for p, keys in by_node.items() if any(k.startswith(_user_tag(prefix, name)) for k in keys)}
        assert holders == {cluster.owner(Layout(prefix).user(name))}, name
    assert sum(1 for keys in by_node.values() if any("{u:" in k for k in keys)) >= 2

    for i, name in enumerate(names):
        user = await cstore.get_user(name)
        charged = (40 + i if i % 2 else 0) + 20
        assert user is not None and (user.balance, user.reserved, user.used) == (1000 - charged, 0, charged)
    rows = await cstore.query_logs(limit=100)
    assert len(rows) == 2 * len(names) and {r.user for r in rows} == set(names)
    assert [r.id for r in rows] == sorted((r.id for r in rows), reverse=True)
    assert await cstore.upstream_stats() == {"openai": (sum(40 + i for i in range(1, len(names), 2)), 3)}
    assert [u.name for u in await cstore.list_users()] == sorted(names)
    assert await cstore.open_holds() == []
    assert (await cstore.audit(clock.now, 30)).ok


async def test_noscript_on_one_node_reloads_the_script_there(
    cluster: LocalCluster, cstore: RedisStore, prefix: str
) -> None:
    names = _spread_names(cluster, prefix, 6)
    for name in names:
        await _funded_user(cstore, name, 100)
    sha = _sha("credit")
    victim = cluster.owner(Layout(prefix).user(names[0]))
    assert _cmd(victim, "SCRIPT FLUSH")
    assert _cmd(victim, "SCRIPT EXISTS", sha) == [False]
    for name in names:  # some run on the flushed node (NOSCRIPT, load, retry), some elsewhere
        assert (await cstore.credit(name, 5)).balance == 105
    assert _cmd(victim, "SCRIPT EXISTS", sha) == [True]


def _sha(name: str) -> str:
    return hashlib.sha1(load_script(name).encode()).hexdigest()


def _move_slot(cluster: LocalCluster, slot: int, src: int, dst: int) -> None:
    """Reshard one slot from node `src` to node `dst`, keys and all (what redis-cli does)."""
    src_id, dst_id = _cmd(src, "CLUSTER MYID"), _cmd(dst, "CLUSTER MYID")
    _cmd(dst, "CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    _cmd(src, "CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while keys := _cmd(src, "CLUSTER GETKEYSINSLOT", slot, 100):
        _cmd(src, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
    for port in cluster.ports:
        _cmd(port, "CLUSTER SETSLOT", slot, "NODE", dst_id)
    _wait(f"slot {slot} served by {dst} everywhere", lambda: _cluster_ok(list(cluster.ports)))


async def test_a_slot_moved_under_a_live_store_is_followed(
    cluster: LocalCluster, cstore: RedisStore, prefix: str, clock: FakeClock
) -> None:
    name = f"mover-{uuid.uuid4().hex[:8]}"
    await cstore.heartbeat("i1")
    key_id = await _funded_user(cstore, name, 1000)
    assert isinstance(await cstore.hold("m1", name, key_id, 300, None, "pv", 60, "i1", "gpt-4o"), Hold)
    src = cluster.owner(Layout(prefix).user(name))
    dst = next(p for p in cluster.ports if p != src)
    _move_slot(cluster, key_slot(Layout(prefix).user(name).encode()), src, dst)
    # The store still maps the slot to `src`: MOVED, then it updates its map and retries.
    assert (await cstore.capture("m1", 120, DONE)).charged == 120
    assert (await cstore.credit(name, 7)).balance == 1000 - 120 + 7
    by_node = _keys_by_node(cluster, prefix)
    assert not any(k.startswith(_user_tag(prefix, name)) for k in by_node[src])
    assert any(k.startswith(_user_tag(prefix, name)) for k in by_node[dst])
    assert (await cstore.audit(clock.now, 30)).ok


async def test_drop_all_clears_every_node_and_only_its_prefix(
    cluster: LocalCluster, cstore: RedisStore, prefix: str, clock: FakeClock
) -> None:
    other_prefix = f"weirtest:{uuid.uuid4().hex}"
    other = RedisStore(cluster.url, prefix=other_prefix, clock=clock, cluster=True)
    await other.open()
    try:
        names = _spread_names(cluster, prefix, 6)
        for store in (cstore, other):
            for name in names:
                await _funded_user(store, name, 10)
        assert sum(1 for keys in _keys_by_node(cluster, prefix).values() if keys) >= 2
        await cstore.drop_all()
        assert all(not keys for keys in _keys_by_node(cluster, prefix).values())
        assert sum(1 for keys in _keys_by_node(cluster, other_prefix).values() if keys) >= 2
        assert [u.name for u in await other.list_users()] == names
    finally:
        await other.drop_all()
        await other.close()


async def test_config_and_factory_build_a_cluster_store(cluster: LocalCluster, clock: FakeClock) -> None:
    assert parse_config({}).store.cluster is False
    prefix = f"weirtest:{uuid.uuid4().hex}"
    config = parse_config({"store": {"backend": "redis", "url": cluster.url, "cluster": True, "prefix": prefix}})
    assert config.store.cluster is True
    store = make_store(config, clock)
    await store.open()
    try:
        names = _spread_names(cluster, prefix, 6)  # a single-server client would meet MOVED here
        for name in names:
            await store.create_user(name)
            await store.credit(name, 3)
        assert [(u.name, u.balance) for u in await store.list_users()] == [(n, 3) for n in names]
    finally:
        assert isinstance(store, RedisStore)
        await store.drop_all()
        await store.close()


# --- errors -----------------------------------------------------------------------------------


async def test_unusable_cluster_urls_are_unavailable_naming_the_setting(cluster: LocalCluster, tmp_path: Path) -> None:
    plain_port = _free_ports(1)[0]
    plain = _start_nodes(_binaries()[0], tmp_path, [plain_port], cluster=False)
    try:
        cases = {
            "redis://:s3cret@127.0.0.1:1/0": "cannot be connected",  # nothing listens
            f"redis://127.0.0.1:{plain_port}/0": "not enabled",  # a server without cluster mode
            cluster.url.replace("/0", "/2"): "'db' must be 0",  # a cluster has only database 0
        }
        for url, why in cases.items():
            with pytest.raises(StoreUnavailable, match="store.url") as err:
                # Generous: a timeout would be a different error than the one each case proves.
                await RedisStore(url, cluster=True, timeout=5).open()
            assert why in str(err.value) and "s3cret" not in str(err.value), str(err.value)
    finally:
        _stop(plain)


async def test_a_single_server_client_on_a_cluster_node_says_to_set_cluster(cluster: LocalCluster) -> None:
    prefix = f"weirtest:{uuid.uuid4().hex}"
    port = next(p for p in cluster.ports if p != cluster.owner(Layout(prefix).users))
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=prefix)
    await store.open()  # PING works on any node
    try:
        with pytest.raises(StoreUnavailable, match="set store.cluster: true"):
            await store.create_user("alice")
    finally:
        await store.close()


async def test_cluster_down_is_unavailable_moves_nothing_and_recovers(lone_node: LocalCluster) -> None:
    # Generous: a command timing out on a busy machine would be "redis unavailable", not CLUSTERDOWN.
    store = RedisStore(lone_node.url, prefix="weir", cluster=True, timeout=5)
    await store.open()
    port = lone_node.ports[0]
    try:
        await store.create_user("alice")
        await store.credit("alice", 10)
        assert await store.ping()
        _cmd(port, "CLUSTER DELSLOTSRANGE", 0, 16383)  # CLUSTERDOWN, then no slot covered
        with pytest.raises(StoreUnavailable, match="redis cluster unavailable"):
            await store.credit("alice", 5)
        assert _cmd(port, "PING") is True  # the node answers: a plain PING would say healthy
        assert not await store.ping()
        _cmd(port, "CLUSTER ADDSLOTSRANGE", 0, 16383)
        _wait("cluster_state:ok", lambda: _cluster_ok(list(lone_node.ports)))
        assert await store.ping()
        assert (await store.credit("alice", 7)).balance == 17  # the failed credit moved nothing
        assert (await store.audit(time.time(), 30)).ok
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (rexc.ClusterDownError("The cluster is down"), True),
        (rexc.MasterDownError("Link with MASTER is down"), True),
        (rexc.ClusterError("TTL exhausted."), True),  # what a MOVED storm ends in
        (rexc.TryAgainError("Multiple keys request during rehashing of slot"), True),
        (rexc.SlotNotCoveredError('Slot "7" is not covered by the cluster.'), True),
        (rexc.RedisClusterException("Redis Cluster cannot be connected."), True),
        (rexc.MovedError("3999 127.0.0.1:7001"), True),  # only a single-server client sees one
        (rexc.ClusterCrossSlotError("Keys in request don't hash to the same slot"), False),  # a bug, not an outage
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_cluster_errors_map_to_store_errors(exc: Exception, unavailable: bool) -> None:
    with pytest.raises(StoreError) as err:
        with translate():
            raise exc
    assert isinstance(err.value, StoreUnavailable) is unavailable
