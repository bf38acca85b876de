"""Dispatch, measured by its own benchmark binary (``dispatch-bench``):
a real ``dispatch server`` on a temporary store and two worker processes on
the gRPC streaming protocol, each with ``--capacity`` slots (its credit).
One invocation runs W1 (batch submit, then drain), W2 at one rate, W3 (sleep
tasks queued behind a paused queue, then released) and W4 (submit, then a
long-polling wait for the result). Dispatch has two durability modes,
``durable`` (fsync of each group commit before acknowledging) and
``relaxed`` (fsync on a timer); it has no memory-only mode."""

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


def run(level, workers, slots, w1_tasks, rate, seconds, in_flight, w3_tasks, w4_tasks, timeout=900):
    """One dispatch-bench invocation; returns its JSON report."""
    argv = [
        BENCH, "--dispatch", SERVER, "--durability", level, "--transport", "grpc",
        "--workers", str(workers), "--capacity", str(slots),
        "--tasks", str(w1_tasks), "--rate", str(max(1, rate)), "--seconds", str(seconds),
        "--latency-submitters", str(in_flight),
        "--sleep-tasks", str(w3_tasks), "--sleep-ms", "1",
        "--roundtrips", str(w4_tasks), "--timeout-secs", str(timeout), "--json",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
    if out.returncode != 0:
        raise RuntimeError(f"dispatch-bench failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def versions():
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"dispatch": f"0.1.0 ({rev.stdout.strip() or 'unknown'})"}
