"""The SQLite schema's scripts, one per version, in the order they were added. Each runs
once per database file (`plugins.billing.store.sqlite.schema.migrate`); a version is never
edited once released: a change is a new version.
"""

from __future__ import annotations

V1 = """
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    preference TEXT NOT NULL,
    balance INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    request_count INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at REAL,
    quota INTEGER,
    balance INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    request_count INTEGER NOT NULL DEFAULT 0,
    models TEXT NOT NULL,
    ips TEXT NOT NULL,
    grp TEXT,
    created_at REAL NOT NULL,
    hint TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys(key_hash);
CREATE INDEX api_keys_user ON api_keys(user, created_at);
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    quota INTEGER NOT NULL,
    period TEXT NOT NULL,
    duration_days INTEGER,
    models TEXT NOT NULL
);
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    plan TEXT NOT NULL,
    quota INTEGER NOT NULL,
    period TEXT NOT NULL,
    start REAL NOT NULL,
    end_at REAL NOT NULL,
    period_start REAL NOT NULL,
    balance INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    models TEXT NOT NULL
);
CREATE INDEX subscriptions_user ON subscriptions(user, end_at);
CREATE TABLE holds (
    request_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    subscription_id TEXT,
    amount INTEGER NOT NULL,
    key_amount INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    checkpoint INTEGER,
    charged INTEGER,
    overage INTEGER,
    resolved_at REAL
);
CREATE INDEX holds_open ON holds(instance_id) WHERE state = 'open';
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    d_balance INTEGER NOT NULL,
    d_reserved INTEGER NOT NULL,
    request_id TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX ledger_account ON ledger(account);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE consume_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    resolution TEXT NOT NULL,
    estimate INTEGER NOT NULL,
    charge INTEGER NOT NULL,
    overage INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    end_reason TEXT NOT NULL,
    usage_source TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    key_name TEXT NOT NULL,
    grp TEXT NOT NULL,
    multiplier TEXT NOT NULL,
    stream INTEGER NOT NULL,
    input INTEGER NOT NULL,
    cache_read INTEGER NOT NULL,
    cache_write_5m INTEGER NOT NULL,
    cache_write_1h INTEGER NOT NULL,
    output INTEGER NOT NULL,
    audio_in INTEGER NOT NULL,
    audio_out INTEGER NOT NULL,
    images INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER,
    status INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX consume_log_user ON consume_log(user, id);
CREATE INDEX consume_log_ts ON consume_log(ts);
CREATE INDEX consume_log_request ON consume_log(request_id);
CREATE TABLE upstream_counters (
    name TEXT PRIMARY KEY,
    used INTEGER NOT NULL DEFAULT 0,
    request_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL
);
"""

# Two indexes only `weir audit` read, each a page written by every hold or capture (the
# request-id index a random page): the audit scans instead (see sqlite_audit.py).
V2 = """
DROP INDEX ledger_account;
DROP INDEX consume_log_request;
"""

# Pages every hold or capture writes to the WAL, cut by two (each page is a 4 KiB frame
# written in the commit): `holds` keyed by its request id directly (WITHOUT ROWID: one
# B-tree instead of the table and its primary-key index), and the two append-only tables
# without AUTOINCREMENT, whose bookkeeping row in `sqlite_sequence` every insert rewrote.
# Neither table is ever deleted from (the ledger refuses it), so plain rowids still only
# grow and every existing id is kept. Each table is rebuilt by copying it.
V3 = """
CREATE TABLE holds_v3 (
    request_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    subscription_id TEXT,
    amount INTEGER NOT NULL,
    key_amount INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    checkpoint INTEGER,
    charged INTEGER,
    overage INTEGER,
    resolved_at REAL
) WITHOUT ROWID;
INSERT INTO holds_v3 SELECT * FROM holds;
DROP TABLE holds;
ALTER TABLE holds_v3 RENAME TO holds;
CREATE INDEX holds_open ON holds(instance_id) WHERE state = 'open';
CREATE TABLE ledger_v3 (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    d_balance INTEGER NOT NULL,
    d_reserved INTEGER NOT NULL,
    request_id TEXT,
    note TEXT NOT NULL DEFAULT ''
);
INSERT INTO ledger_v3 SELECT * FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v3 RENAME TO ledger;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TABLE consume_log_v3 (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,
    resolution TEXT NOT NULL,
    estimate INTEGER NOT NULL,
    charge INTEGER NOT NULL,
    overage INTEGER NOT NULL,
    price_version TEXT NOT NULL,
    end_reason TEXT NOT NULL,
    usage_source TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    key_name TEXT NOT NULL,
    grp TEXT NOT NULL,
    multiplier TEXT NOT NULL,
    stream INTEGER NOT NULL,
    input INTEGER NOT NULL,
    cache_read INTEGER NOT NULL,
    cache_write_5m INTEGER NOT NULL,
    cache_write_1h INTEGER NOT NULL,
    output INTEGER NOT NULL,
    audio_in INTEGER NOT NULL,
    audio_out INTEGER NOT NULL,
    images INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    ttft_ms INTEGER,
    status INTEGER NOT NULL,
    error TEXT NOT NULL
);
INSERT INTO consume_log_v3 SELECT * FROM consume_log;
DROP TABLE consume_log;
ALTER TABLE consume_log_v3 RENAME TO consume_log;
CREATE INDEX consume_log_user ON consume_log(user, id);
CREATE INDEX consume_log_ts ON consume_log(ts);
DELETE FROM sqlite_sequence WHERE name IN ('ledger', 'consume_log');
"""

# Hold liveness: `touched_at`, the last checkpoint's time. The ttl needs no column: it is
# `expires_at` minus the last sign of life (see sqlite_store._CHECKPOINT). No rewrite.
V4 = "ALTER TABLE holds ADD COLUMN touched_at REAL;"

# Price versions (docs/billing-rules.md §9): the numbered price lists every instance
# charges with; `plugins.billing.store.sqlite.prices` reads and appends them.
V5 = """
CREATE TABLE price_versions (
    number INTEGER PRIMARY KEY,
    base INTEGER NOT NULL,
    document TEXT NOT NULL,
    digest TEXT NOT NULL,
    source TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""

# Async tasks (docs/billing-rules.md §9, docs/tasks.md): one row per task, owned by its id
# (its hold has the same id), and the task's seconds in its consume-log row.
V6 = """
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    api TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    seconds INTEGER NOT NULL,
    terms TEXT NOT NULL,
    key_name TEXT NOT NULL,
    grp TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL,
    state TEXT NOT NULL,
    end_reason TEXT NOT NULL DEFAULT '',
    charge INTEGER,
    note TEXT NOT NULL DEFAULT '',
    ended_at REAL,
    next_poll_at REAL NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX tasks_due ON tasks(next_poll_at) WHERE state = 'open';
CREATE INDEX tasks_user ON tasks(user, created_at);
ALTER TABLE consume_log ADD COLUMN seconds INTEGER NOT NULL DEFAULT 0;
"""

# Accounts people can edit: a user's disabled flag, a subscription's cancellation, and who
# made a ledger entry by hand (top-ups, adjustments). Columns only: no rewrite.
V7 = """
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN cancelled_at REAL;
ALTER TABLE ledger ADD COLUMN actor TEXT NOT NULL DEFAULT '';
"""
