"""Shared pieces of the peer benchmark: the workers' stats files, services
started and stopped by PID, free loopback ports, percentiles, the open-loop
pacer and the machine calibrations (loopback round trip, fsync).

Every worker process, whatever its peer and language, appends one line per
finished task to its own stats file, ``start_us end_us sent_us``
(microseconds since the epoch; ``sent_us`` is 0 for tasks without a
schedule). The driver counts and times tasks from these files only, so every
peer is measured the same way: by its workers, at task start.
"""

import collections
import os
import signal
import socket
import subprocess
import threading
import time


def now_us():
    return time.time_ns() // 1000


class Recorder:
    """Buffers ``(start_us, end_us, sent_us)`` of finished tasks and appends
    them to ``path`` from a background thread every 50 ms."""

    def __init__(self, path):
        self.path = path
        self.queue = collections.deque()
        self.file = open(path, "a", buffering=1 << 16)
        thread = threading.Thread(target=self._flush_loop, daemon=True)
        thread.start()

    def record(self, start_us, sent_us):
        self.queue.append((start_us, now_us(), sent_us))

    def _flush_loop(self):
        while True:
            time.sleep(0.05)
            lines = []
            while True:
                try:
                    a, b, c = self.queue.popleft()
                except IndexError:
                    break
                lines.append(f"{a} {b} {c}\n")
            if lines:
                self.file.write("".join(lines))
                self.file.flush()


def recorder_from_env():
    """The recorder of this worker process, in ``$PEER_STATS_DIR``."""
    directory = os.environ["PEER_STATS_DIR"]
    return Recorder(os.path.join(directory, f"w-{os.getpid()}.log"))


def count_done(stats_dir):
    """Tasks finished so far, over every worker's stats file."""
    total = 0
    for name in os.listdir(stats_dir):
        if name.endswith(".log"):
            with open(os.path.join(stats_dir, name), "rb") as f:
                total += f.read().count(b"\n")
    return total


def read_records(stats_dir):
    """Every ``(start_us, end_us, sent_us)`` in the stats files."""
    out = []
    for name in os.listdir(stats_dir):
        if name.endswith(".log"):
            with open(os.path.join(stats_dir, name)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3:
                        out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def wait_done(stats_dir, expected, timeout, procs=()):
    """Waits until ``expected`` tasks are recorded; returns the count seen
    (less than expected on timeout). Fails if a worker process died."""
    deadline = time.monotonic() + timeout
    while True:
        done = count_done(stats_dir)
        if done >= expected:
            return done
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.args} exited with {p.returncode}")
        if time.monotonic() >= deadline:
            return done
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Processes:
    """Every child process started by the driver, stopped by PID: SIGTERM,
    then SIGKILL after a grace period. Each runs in its own process group so
    that the children it forks (Celery, Dramatiq) go with it."""

    def __init__(self):
        self.procs = []

    def start(self, args, log_path, env=None, cwd=None):
        log = open(log_path, "ab")
        p = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:
            # The leader is gone; its group may not be.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, grace=3.0)


def quantile(sorted_values, q):
    """Nearest-rank quantile of a sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def latency_summary(samples_us):
    s = sorted(samples_us)
    ms = lambda v: None if v is None else v / 1000.0  # noqa: E731
    return {
        "samples": len(s),
        "p50_ms": ms(quantile(s, 0.50)),
        "p99_ms": ms(quantile(s, 0.99)),
        "p999_ms": ms(quantile(s, 0.999)),
        "max_ms": ms(s[-1] if s else None),
    }


def open_loop(make_submit, rate, seconds, in_flight):
    """Submits ``rate`` tasks a second for ``seconds``, open loop: a pacer
    releases each task at its scheduled time whatever happened to the
    previous ones, and ``in_flight`` threads (each with its own client from
    ``make_submit()``) send them; every task carries its scheduled time, so
    a late send counts against the peer. Returns what was sent."""
    import queue

    total = int(rate * seconds)
    lead = 0.05
    start = time.monotonic() + lead
    start_us = now_us() + int(lead * 1e6)
    todo = queue.Queue()
    late = [0]
    errors = []

    def sender():
        try:
            submit = make_submit()
            while True:
                item = todo.get()
                if item is None:
                    return
                target, sent_us = item
                if time.monotonic() - target > 0.001:
                    late[0] += 1
                submit(sent_us)
        except Exception as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for i in range(total):
        offset = i / rate
        target = start + offset
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        todo.put((target, start_us + int(offset * 1e6)))
    for _ in threads:
        todo.put(None)
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"submitting failed: {errors[0]!r}")
    elapsed = time.monotonic() - start
    return {"sent": total, "late": late[0], "seconds": elapsed}


def loopback_rtt_us(rounds=2000):
    """Round trip of one byte over a loopback TCP connection (p50, p99)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def echo():
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            b = conn.recv(1)
            if not b:
                break
            conn.sendall(b)
        conn.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        c.sendall(b"x")
        c.recv(1)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    c.close()
    t.join(timeout=2)
    srv.close()
    samples.sort()
    return {"p50_us": quantile(samples, 0.5), "p99_us": quantile(samples, 0.99)}


def fsync_ms(directory, rounds=100):
    """Latency of a 4 KiB append + fsync in ``directory`` (p50, p99)."""
    path = os.path.join(directory, "fsync-calibration")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"\0" * 4096
    samples = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            os.write(fd, block)
            os.fsync(fd)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return {"p50_ms": quantile(samples, 0.5), "p99_ms": quantile(samples, 0.99)}


def loadavg():
    return list(os.getloadavg())
