"""The Node peers: BullMQ on Redis, graphile-worker and pg-boss on
PostgreSQL. Their clients and workers are the scripts in ``bench/peers/node``
(dependencies pinned by its package-lock.json, installed by
``bench/peers/run`` with ``npm ci``); this module starts their services and
runs the scripts, as ``apalis_peer`` does its binary. Each script's header
says how it is configured."""

import json
import os
import shutil
import subprocess

from peers import pg_service
from peers.base import Peer
from peers.redis_service import SETTING as REDIS_SETTING, redis_version, start_redis

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_DIR = os.path.join(HERE, "node")
NODE = os.environ.get("NODE", "node")


def package_version(name):
    with open(os.path.join(NODE_DIR, "node_modules", name, "package.json")) as f:
        return json.load(f)["version"]


def node_version():
    return subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()


class NodePeer(Peer):
    script = "?"
    option = "?"

    def _base(self, command):
        return [NODE, os.path.join(NODE_DIR, self.script), command, f"--{self.option}", self.target]

    def _call(self, command, *args):
        out = subprocess.run(self._base(command) + [str(a) for a in args], capture_output=True, text=True,
                             cwd=NODE_DIR)
        if out.returncode != 0:
            raise RuntimeError(f"{self.script} {command} failed: {out.stderr[-2000:]}")
        return out.stdout

    def _json(self, command, *args):
        return json.loads(self._call(command, *args).strip().splitlines()[-1])

    def enqueue(self, n, sleep_ms):
        self._call("enqueue", "--n", n, "--sleep-ms", sleep_ms)

    def worker_command(self, slots, stats_dir):
        # Every worker process gets these same arguments; each names its own
        # stats file after its PID.
        return self._base("work") + ["--slots", str(slots)], {}

    def open_loop(self, rate, seconds, in_flight):
        return self._json("open-loop", "--rate", rate, "--secs", seconds, "--in-flight", in_flight)

    def roundtrip(self, n, budget_s):
        return self._json("roundtrip", "--n", n, "--budget-secs", budget_s)["samples_us"]


class BullmqPeer(NodePeer):
    name = "bullmq"
    script = "bullmq-peer.mjs"
    option = "redis"
    setting = REDIS_SETTING

    def start(self, level, tmp, procs):
        self.target = start_redis(level, tmp, procs)
        self._call("setup")

    def versions(self):
        return {"bullmq": package_version("bullmq"), "ioredis": package_version("ioredis"),
                "redis": redis_version(), "node": node_version()}


class PostgresNodePeer(NodePeer):
    """A peer on the shared throw-away PostgreSQL server: a fresh database
    for each workload of each run."""

    option = "db"
    levels = pg_service.LEVELS
    setting = pg_service.SETTING
    database = None

    def start(self, level, tmp, procs):
        self.database, self.target = pg_service.SERVER.fresh_database(level)
        self._call("setup")

    def close(self):
        if self.database:
            pg_service.SERVER.drop_database(self.database)
            self.database = None


class GraphilePeer(PostgresNodePeer):
    name = "graphile-worker"
    script = "graphile-peer.mjs"

    def versions(self):
        return {"graphile-worker": package_version("graphile-worker"), "pg (node)": package_version("pg"),
                "postgresql": pg_service.SERVER.version(), "node": node_version()}


class PgBossPeer(PostgresNodePeer):
    name = "pg-boss"
    script = "pgboss-peer.mjs"

    def versions(self):
        return {"pg-boss": package_version("pg-boss"), "pg (node)": package_version("pg"),
                "postgresql": pg_service.SERVER.version(), "node": node_version()}


def available():
    """Why the Node peers cannot run here, or None."""
    if shutil.which(NODE) is None:
        return "node is not installed"
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
        return "bench/peers/node has no node_modules (run npm ci there, or bench/peers/run)"
    return None
