"""Dispatch, measured by its own benchmark binary (``dispatch-bench``):
a real ``dispatch server`` on a temporary store and two worker processes on
the gRPC streaming protocol, each with ``--capacity`` slots (its credit).
One invocation runs W1 (batch submit, then drain), W2 at one rate, W3 (sleep
tasks queued behind a paused queue, then released) and W4 (submit, then a
long-polling wait for the result). Dispatch has two durability modes,
``durable`` (fsync of each group commit before acknowledging) and
``relaxed`` (fsync on a timer); it has no memory-only mode.

``dispatch-postgres`` is the same on the PostgreSQL store: ``dispatch
server --store postgres://...`` on the throw-away PostgreSQL server that
graphile-worker and pg-boss use (``pg_service``), a fresh database for each
invocation, one replica by default (``--pg-replicas 2``: a leader and a
standby). There ``durable`` keeps ``synchronous_commit`` on for the
server's writer session and ``relaxed`` turns it off (a commit does not
wait for its WAL flush).

W1 and W3 are timed from the first task's start to the last one's end, as
the workers stamp them (``from_first_start`` in dispatch-bench's report), as
for every peer; dispatch-bench's own drain figure, from the workers' launch,
is kept in the result as ``seconds_from_launch``."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BENCH = os.path.join(TARGET, "release", "dispatch-bench")
SERVER = os.path.join(TARGET, "release", "dispatch")

LEVELS = {
    "memory": "Dispatch has no memory-only mode (only durable and relaxed)",
    "relaxed": None,
    "durable": None,
}
SETTING = {
    "relaxed": "--durability relaxed (group commit, fsync on a timer)",
    "durable": "--durability durable (group commit, fsync before acknowledging)",
}
POSTGRES_SETTING = {
    "relaxed": "--store postgres, --durability relaxed (synchronous_commit=off on its writer)",
    "durable": "--store postgres, --durability durable (synchronous_commit=on)",
}


def run(level, workers, slots, w1_tasks, rate, seconds, in_flight, w3_tasks, w4_tasks, timeout=900,
        store_url=None, replicas=1):
    """One dispatch-bench invocation (on ``store_url``, a PostgreSQL
    database, when given); returns its JSON report."""
    argv = [
        BENCH, "--dispatch", SERVER, "--durability", level, "--transport", "grpc",
        "--workers", str(workers), "--capacity", str(slots),
        "--tasks", str(w1_tasks), "--rate", str(max(1, rate)), "--seconds", str(seconds),
        "--latency-submitters", str(in_flight),
        "--sleep-tasks", str(w3_tasks), "--sleep-ms", "1",
        "--roundtrips", str(w4_tasks), "--timeout-secs", str(timeout), "--json",
    ]
    if store_url:
        argv += ["--store-url", store_url, "--replicas", str(replicas)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
    if out.returncode != 0:
        raise RuntimeError(f"dispatch-bench failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def versions():
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"dispatch": f"0.1.0 ({rev.stdout.strip() or 'unknown'})"}
