"""A throw-away redis-server on a loopback port, configured for a
durability level: memory (no persistence), relaxed (AOF, fsync every
second), durable (AOF, fsync before every reply)."""

import os
import subprocess

from common import free_port, wait_port

AOF = {
    "memory": ["--appendonly", "no"],
    "relaxed": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "durable": ["--appendonly", "yes", "--appendfsync", "always"],
}

SETTING = {
    "memory": "redis: no AOF, no RDB",
    "relaxed": "redis: appendonly yes, appendfsync everysec",
    "durable": "redis: appendonly yes, appendfsync always",
}


def start_redis(level, tmp, procs):
    """Starts redis-server; returns its URL."""
    port = free_port()
    data = os.path.join(tmp, "redis")
    os.makedirs(data, exist_ok=True)
    args = [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port),
        "--dir", data, "--save", "", "--daemonize", "no",
        "--protected-mode", "yes", "--logfile", "",
    ] + AOF[level]
    procs.start(args, os.path.join(tmp, "redis.log"))
    wait_port(port)
    return f"redis://127.0.0.1:{port}/0"


def redis_version():
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    return out.stdout.strip()
