"""apalis 0.7 (Rust) on its SQLite storage, through the ``apalis-peer``
binary built from ``bench/peers/apalis``. SQLite in WAL mode with
``synchronous=FULL`` (durable) or ``NORMAL`` (relaxed: commits are not
fsynced, the WAL is at checkpoints). A worker process polls the table every
10 ms (apalis' default is 100 ms) and runs up to SLOTS jobs at once; each
worker process writes its own stats file in the stats folder.

apalis-sql 0.7 stamps a pushed job's ``run_at`` in whole seconds and fetches
only jobs with ``run_at`` before the current second, so a plain push waits
for the next second boundary (0.5 s on average) whatever the poll interval.
The binary therefore pushes every job with ``run_at`` set to the previous
second (``Storage::schedule``), due at once: W2 and W4 measure the poll
interval and the database, not that rounding.
Round trips: push, then poll the job's row every 0.5 ms until done."""

import json
import os
import subprocess

from peers.base import Peer

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("APALIS_PEER_BIN", os.path.join(HERE, "apalis", "target", "release", "apalis-peer"))
SYNC = {"relaxed": "normal", "durable": "full"}


class ApalisPeer(Peer):
    name = "apalis"
    levels = {
        "memory": "the SQLite storage cannot be shared in memory between worker processes",
        "relaxed": None,
        "durable": None,
    }
    setting = {
        "relaxed": "SQLite WAL, synchronous=NORMAL",
        "durable": "SQLite WAL, synchronous=FULL",
    }

    def _base(self):
        return [BINARY, "--db", self.db, "--sync", self.sync]

    def start(self, level, tmp, procs):
        self.db = os.path.join(tmp, "apalis.db")
        self.sync = SYNC[level]
        subprocess.run(self._base() + ["enqueue", "--n", "0"], check=True)

    def enqueue(self, n, sleep_ms):
        subprocess.run(self._base() + ["enqueue", "--n", str(n), "--sleep-ms", str(sleep_ms)], check=True)

    def worker_command(self, slots, stats_dir):
        # The driver starts every worker process with these same arguments:
        # each process names its own stats file in the folder.
        return self._base() + ["work", "--slots", str(slots), "--stats-dir", stats_dir], {}

    def open_loop(self, rate, seconds, in_flight):
        out = subprocess.run(
            self._base() + ["open-loop", "--rate", str(rate), "--secs", str(seconds),
                            "--in-flight", str(in_flight)],
            check=True, capture_output=True, text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def roundtrip(self, n, budget_s):
        out = subprocess.run(
            self._base() + ["roundtrip", "--n", str(n), "--budget-secs", str(budget_s)],
            check=True, capture_output=True, text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["samples_us"]

    def versions(self):
        lock = os.path.join(HERE, "apalis", "Cargo.lock")
        out = {}
        name = None
        with open(lock) as f:
            for line in f:
                if line.startswith("name = "):
                    name = line.split('"')[1]
                elif line.startswith("version = ") and name in ("apalis", "apalis-sql", "sqlx", "libsqlite3-sys"):
                    out[name] = line.split('"')[1]
        return out
