"""beanstalkd (Debian) with the greenstalk client: binlog off (memory),
``-f 1000`` (fsync at most every second) or ``-f 0`` (fsync before
replying). A worker process runs ``slots`` threads, each with its own
connection doing reserve, run, delete. Round trips: the worker puts a reply
on the tube the task names, which the client reserves."""

import json
import os
import subprocess
import sys
import threading

import greenstalk

from common import free_port, recorder_from_env, wait_port
from peers.base import Peer, run_task

TUBE = "bench"
FLAGS = {"memory": [], "relaxed": ["-f", "1000"], "durable": ["-f", "0"]}


class Beanstalk(Peer):
    name = "beanstalkd"
    setting = {
        "memory": "no binlog",
        "relaxed": "binlog, -f 1000",
        "durable": "binlog, -f 0",
    }

    def start(self, level, tmp, procs):
        self.port = free_port()
        args = ["beanstalkd", "-l", "127.0.0.1", "-p", str(self.port)]
        if level != "memory":
            binlog = os.path.join(tmp, "binlog")
            os.makedirs(binlog, exist_ok=True)
            args += ["-b", binlog] + FLAGS[level]
        procs.start(args, os.path.join(tmp, "beanstalkd.log"))
        wait_port(self.port)
        self.client = greenstalk.Client(("127.0.0.1", self.port), use=TUBE)

    def enqueue(self, n, sleep_ms):
        body = json.dumps({"sent_us": 0, "sleep_ms": sleep_ms})
        for _ in range(n):
            self.client.put(body)

    def worker_command(self, slots, stats_dir):
        return ([sys.executable, "-m", "peers.beanstalk_peer", str(self.port), str(slots)], {})

    def submit(self, sent_us):
        self.client.put(json.dumps({"sent_us": sent_us, "sleep_ms": 0}))

    def make_submit(self):
        c = greenstalk.Client(("127.0.0.1", self.port), use=TUBE)
        return lambda sent_us: c.put(json.dumps({"sent_us": sent_us, "sleep_ms": 0}))

    def roundtrip(self, n, budget_s):
        import time

        reply = f"reply-{os.getpid()}"
        c = greenstalk.Client(("127.0.0.1", self.port), use=TUBE, watch=reply)
        body = json.dumps({"sent_us": 0, "sleep_ms": 0, "reply": reply})
        samples = []
        stop = time.monotonic() + budget_s
        for _ in range(n):
            t0 = time.perf_counter_ns()
            c.put(body)
            job = c.reserve(timeout=30)
            c.delete(job)
            samples.append((time.perf_counter_ns() - t0) // 1000)
            if time.monotonic() > stop:
                break
        c.close()
        return samples

    def versions(self):
        out = subprocess.run(["beanstalkd", "-v"], capture_output=True, text=True)
        return {"beanstalkd": out.stdout.strip(), "greenstalk": greenstalk.__version__ if hasattr(greenstalk, "__version__") else "2.1.1"}

    def close(self):
        self.client.close()


def _work(port, recorder):
    c = greenstalk.Client(("127.0.0.1", port), watch=TUBE)
    used = TUBE
    while True:
        job = c.reserve()
        body = json.loads(job.body)
        run_task(recorder, body["sent_us"], body["sleep_ms"])
        c.delete(job)
        reply = body.get("reply")
        if reply:
            if used != reply:
                c.use(reply)
                used = reply
            c.put("ok")


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
