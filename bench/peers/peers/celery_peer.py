"""Celery on Redis (broker and result backend). A worker process is
``celery worker -P threads -c SLOTS`` on queue ``bench`` (without gossip,
mingle and heartbeats); tasks are acknowledged on receipt, Celery's default.
Round trips: ``apply_async(...).get()``."""

import os
import sys
import time

from celery import Celery

from common import recorder_from_env
from peers.base import Peer, run_task
from peers.redis_service import SETTING, redis_version, start_redis

URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)
RECORDER = recorder_from_env() if "PEER_STATS_DIR" in os.environ else None


@app.task(name="bench.noop", ignore_result=True)
def noop(sent_us, sleep_ms):
    run_task(RECORDER, sent_us, sleep_ms)


@app.task(name="bench.echo")
def echo(sent_us, sleep_ms):
    run_task(RECORDER, sent_us, sleep_ms)
    return 1


class CeleryPeer(Peer):
    name = "celery"
    setting = SETTING

    def start(self, level, tmp, procs):
        self.url = start_redis(level, tmp, procs)
        # The client's own app for this service; it sends by task name.
        self.client = Celery("bench-client", broker=self.url, backend=self.url)
        self.client.conf.update(task_default_queue="bench", broker_connection_retry_on_startup=True)

    def enqueue(self, n, sleep_ms):
        with self.client.producer_or_acquire() as producer:
            for _ in range(n):
                self.client.send_task("bench.noop", (0, sleep_ms), producer=producer, ignore_result=True)

    def worker_command(self, slots, stats_dir):
        argv = [
            sys.executable, "-m", "celery", "-A", "peers.celery_peer", "worker",
            "-P", "threads", "-c", str(slots), "-Q", "bench", "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"w{time.monotonic_ns()}@bench",
        ]
        return argv, {"PEER_REDIS_URL": self.url}

    def submit(self, sent_us):
        self.client.send_task("bench.noop", (sent_us, 0), ignore_result=True)

    def roundtrip(self, n, budget_s):
        samples = []
        stop = time.monotonic() + budget_s
        for _ in range(n):
            t0 = time.perf_counter_ns()
            self.client.send_task("bench.echo", (0, 0)).get(timeout=30)
            samples.append((time.perf_counter_ns() - t0) // 1000)
            if time.monotonic() > stop:
                break
        return samples

    def close(self):
        self.client.close()

    def versions(self):
        import celery
        import kombu
        import redis

        return {"celery": celery.__version__, "kombu": kombu.__version__, "redis-py": redis.__version__, "redis": redis_version()}
