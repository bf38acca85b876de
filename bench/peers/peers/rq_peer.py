"""RQ on Redis. A worker process is an RQ ``SimpleWorker`` (runs jobs in
its own process; the default ``Worker`` forks once per job): one job at a
time, so RQ has no 16-slot worker for W3. Round trips:
``job.latest_result(timeout=...)``."""

import os
import sys
import time

import redis
import rq
from rq import Queue, SimpleWorker

from common import recorder_from_env
from peers.base import Peer, run_task
from peers.redis_service import SETTING, redis_version, start_redis

RECORDER = None


def noop(sent_us, sleep_ms):
    global RECORDER
    if RECORDER is None:
        RECORDER = recorder_from_env()
    run_task(RECORDER, sent_us, sleep_ms)
    return 1


class RqPeer(Peer):
    name = "rq"
    setting = SETTING
    workloads_na = {"W3": "an RQ worker process runs one job at a time (no 16-slot worker)"}

    def start(self, level, tmp, procs):
        self.url = start_redis(level, tmp, procs)
        self.redis = redis.Redis.from_url(self.url)
        self.queue = Queue("bench", connection=self.redis)

    def enqueue(self, n, sleep_ms):
        chunk = 1000
        left = n
        while left:
            k = min(chunk, left)
            with self.redis.pipeline() as pipe:
                jobs = [Queue.prepare_data(noop, args=(0, sleep_ms), result_ttl=0) for _ in range(k)]
                self.queue.enqueue_many(jobs, pipeline=pipe)
                pipe.execute()
            left -= k

    def worker_command(self, slots, stats_dir):
        return [sys.executable, "-m", "peers.rq_peer", self.url], {}

    def submit(self, sent_us):
        self.queue.enqueue(noop, sent_us, 0, result_ttl=0)

    def roundtrip(self, n, budget_s):
        samples = []
        stop = time.monotonic() + budget_s
        for _ in range(n):
            t0 = time.perf_counter_ns()
            job = self.queue.enqueue(noop, 0, 0)
            if job.latest_result(timeout=30) is None:
                raise RuntimeError("an RQ job had no result within 30 s")
            samples.append((time.perf_counter_ns() - t0) // 1000)
            if time.monotonic() > stop:
                break
        return samples

    def versions(self):
        return {"rq": rq.__version__, "redis-py": redis.__version__, "redis": redis_version()}

    def close(self):
        self.redis.close()


def main():
    conn = redis.Redis.from_url(sys.argv[1])
    worker = SimpleWorker([Queue("bench", connection=conn)], connection=conn)
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    main()
