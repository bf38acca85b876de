"""gearmand (Debian) with a small raw-protocol client (the Python ``gear``
library is several times slower than the server). gearmand keeps its queue
in memory: it has no fsync setting to match the other levels. A worker
process runs ``slots`` threads, each its own connection doing GRAB_JOB /
WORK_COMPLETE (PRE_SLEEP when idle); round trips are foreground SUBMIT_JOB
waiting for WORK_COMPLETE, the protocol's own way."""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from common import free_port, recorder_from_env, wait_port
from peers.base import Peer, run_task

FUNCTION = b"bench"
REQ, RES = b"\0REQ", b"\0RES"
CAN_DO, PRE_SLEEP, NOOP, SUBMIT_JOB, JOB_CREATED = 1, 4, 6, 7, 8
GRAB_JOB, NO_JOB, JOB_ASSIGN, WORK_COMPLETE, SUBMIT_JOB_BG = 9, 10, 11, 13, 18


class Conn:
    """One connection speaking the binary protocol."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    @staticmethod
    def packet(kind, *args):
        data = b"\0".join(args)
        return REQ + struct.pack(">II", kind, len(data)) + data

    def send(self, kind, *args):
        self.sock.sendall(self.packet(kind, *args))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("gearmand closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        head = self._read(12)
        if head[:4] != RES:
            raise ConnectionError(f"bad magic {head[:4]!r}")
        kind, size = struct.unpack(">II", head[4:])
        return kind, self._read(size)

    def close(self):
        self.sock.close()


class Gearman(Peer):
    name = "gearmand"
    levels = {
        "memory": None,
        "relaxed": "gearmand's queue is in memory; its persistent queue modules have no fsync setting to match",
        "durable": "gearmand's queue is in memory; its persistent queue modules have no fsync setting to match",
    }
    setting = {"memory": "builtin in-memory queue"}

    def start(self, level, tmp, procs):
        self.port = free_port()
        # gearmand refuses to start without its configuration file.
        config = os.path.join(tmp, "gearmand.conf")
        open(config, "w").close()
        args = [
            "gearmand", "--listen", "127.0.0.1", "--port", str(self.port),
            "--log-file", os.path.join(tmp, "gearmand.log"),
            "--pid-file", os.path.join(tmp, "gearmand.pid"),
            "--config-file", config,
        ]
        procs.start(args, os.path.join(tmp, "gearmand.out"))
        wait_port(self.port)
        self.conn = Conn(self.port)

    def enqueue(self, n, sleep_ms):
        body = json.dumps({"sent_us": 0, "sleep_ms": sleep_ms}).encode()
        chunk = 1000
        left = n
        while left:
            k = min(chunk, left)
            self.conn.sock.sendall(Conn.packet(SUBMIT_JOB_BG, FUNCTION, b"", body) * k)
            for _ in range(k):
                kind, _ = self.conn.recv()
                if kind != JOB_CREATED:
                    raise RuntimeError(f"gearmand answered {kind} to SUBMIT_JOB_BG")
            left -= k

    def worker_command(self, slots, stats_dir):
        return ([sys.executable, "-m", "peers.gearman_peer", str(self.port), str(slots)], {})

    def submit(self, sent_us):
        body = json.dumps({"sent_us": sent_us, "sleep_ms": 0}).encode()
        self.conn.send(SUBMIT_JOB_BG, FUNCTION, b"", body)
        self.conn.recv()

    def make_submit(self):
        conn = Conn(self.port)

        def submit(sent_us):
            body = json.dumps({"sent_us": sent_us, "sleep_ms": 0}).encode()
            conn.send(SUBMIT_JOB_BG, FUNCTION, b"", body)
            conn.recv()

        return submit

    def roundtrip(self, n, budget_s):
        body = json.dumps({"sent_us": 0, "sleep_ms": 0}).encode()
        samples = []
        stop = time.monotonic() + budget_s
        for _ in range(n):
            t0 = time.perf_counter_ns()
            self.conn.send(SUBMIT_JOB, FUNCTION, b"", body)
            while self.conn.recv()[0] != WORK_COMPLETE:
                pass
            samples.append((time.perf_counter_ns() - t0) // 1000)
            if time.monotonic() > stop:
                break
        return samples

    def versions(self):
        out = subprocess.run(["gearmand", "--version"], capture_output=True, text=True)
        return {"gearmand": out.stdout.strip().split(" - ")[0]}

    def close(self):
        self.conn.close()


def _work(port, recorder):
    c = Conn(port)
    c.send(CAN_DO, FUNCTION)
    while True:
        c.send(GRAB_JOB)
        kind, data = c.recv()
        if kind == NO_JOB:
            c.send(PRE_SLEEP)
            while c.recv()[0] != NOOP:
                pass
            continue
        if kind != JOB_ASSIGN:
            continue
        handle, _function, payload = data.split(b"\0", 2)
        body = json.loads(payload)
        run_task(recorder, body["sent_us"], body["sleep_ms"])
        c.send(WORK_COMPLETE, handle, b"")


def main():
    port, slots = int(sys.argv[1]), int(sys.argv[2])
    recorder = recorder_from_env()
    threads = [threading.Thread(target=_work, args=(port, recorder), daemon=True) for _ in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
