"""The interface every peer implements, and the task body every Python
worker runs."""

import time

from common import now_us, open_loop

LEVELS = ("memory", "relaxed", "durable")


def run_task(recorder, sent_us, sleep_ms):
    """The benchmark's one task: stamp the start, sleep if asked, record."""
    start = now_us()
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    recorder.record(start, sent_us)


class Peer:
    """A task queue under test.

    ``levels`` maps each durability level to None (supported) or the reason
    it is not; ``workloads_na`` maps a workload to the reason the peer cannot
    run it. ``start`` starts the service on a free loopback port in ``tmp``
    (through ``procs``, stopped by PID by the driver); ``enqueue`` loads
    tasks (not timed); ``worker_command`` is one worker process;
    ``open_loop`` submits at a fixed rate; ``roundtrip`` submits and waits
    for the result, one task at a time, returning microsecond samples.
    """

    name = "?"
    levels = {level: None for level in LEVELS}
    workloads_na = {}
    setting = {}

    def start(self, level, tmp, procs):
        raise NotImplementedError

    def enqueue(self, n, sleep_ms):
        raise NotImplementedError

    def worker_command(self, slots, stats_dir):
        """``(argv, extra_env)`` of one worker process."""
        raise NotImplementedError

    def submit(self, sent_us):
        raise NotImplementedError

    def make_submit(self):
        """A submit function for one sending thread (its own connection
        where the client is not thread-safe)."""
        return self.submit

    def open_loop(self, rate, seconds, in_flight):
        return open_loop(self.make_submit, rate, seconds, in_flight)

    def roundtrip(self, n, budget_s):
        raise NotImplementedError

    def versions(self):
        return {}

    def close(self):
        """Drops client connections (the service is stopped by the driver)."""
