"""Dramatiq on Redis, with the Results middleware (Redis backend) for round
trips. A worker process is ``dramatiq --processes 1 --threads SLOTS``
(its supervisor forks the one worker process)."""

import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from common import recorder_from_env
from peers.base import Peer, run_task
from peers.redis_service import SETTING, redis_version, start_redis

URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
RECORDER = None


def _recorder():
    global RECORDER
    if RECORDER is None:
        RECORDER = recorder_from_env()
    return RECORDER


def setup(url):
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    dramatiq.set_broker(broker)
    return broker


BROKER = setup(URL)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(sent_us, sleep_ms):
    run_task(_recorder(), sent_us, sleep_ms)


@dramatiq.actor(queue_name="bench", max_retries=0, store_results=True)
def echo(sent_us, sleep_ms):
    run_task(_recorder(), sent_us, sleep_ms)
    return 1


class DramatiqPeer(Peer):
    name = "dramatiq"
    setting = SETTING

    def start(self, level, tmp, procs):
        global BROKER
        self.url = start_redis(level, tmp, procs)
        BROKER = setup(self.url)
        for actor in (noop, echo):
            actor.broker = BROKER
            BROKER.declare_actor(actor)

    def enqueue(self, n, sleep_ms):
        for _ in range(n):
            noop.send(0, sleep_ms)

    def worker_command(self, slots, stats_dir):
        argv = [
            sys.executable, "-m", "dramatiq", "peers.dramatiq_peer",
            "--processes", "1", "--threads", str(slots), "--queues", "bench",
        ]
        return argv, {"PEER_REDIS_URL": self.url}

    def submit(self, sent_us):
        noop.send(sent_us, 0)

    def roundtrip(self, n, budget_s):
        samples = []
        stop = time.monotonic() + budget_s
        for _ in range(n):
            t0 = time.perf_counter_ns()
            echo.send(0, 0).get_result(block=True, timeout=30_000)
            samples.append((time.perf_counter_ns() - t0) // 1000)
            if time.monotonic() > stop:
                break
        return samples

    def versions(self):
        import redis

        return {"dramatiq": dramatiq.__version__, "redis-py": redis.__version__, "redis": redis_version()}

    def close(self):
        BROKER.close()
