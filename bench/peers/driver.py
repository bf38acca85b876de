"""The peer benchmark driver: runs W1-W4 against Dispatch and its peers on
loopback, at matched durability levels, and writes
``results/<timestamp>.json``; ``render.py`` turns that into
docs/benchmarks.md and the chart. Run it through ``bench/peers/run``, which
installs what it needs first.

Workloads (2 worker processes, SLOTS tasks at once in each, one payload
``{"sent_us", "sleep_ms"}`` for everyone):

- W1 drain: N no-op tasks queued, then the workers start; tasks per second
  from the first task's start to the last one's end, as the workers stamp
  them, for every system, Dispatch included (the launch of the worker
  processes is not counted).
- W2 latency: open-loop submits at fixed rates from IN_FLIGHT sending
  threads; submit-to-start (the worker's start stamp minus the task's
  scheduled send time) p50/p99/p99.9; rates go up until the peer saturates.
- W3: N tasks that sleep 1 ms; time from the first start to the last end
  against the ideal N x 1 ms / slots.
- W4: one client submits a task and waits for its result, one at a time.

Each peer and level: one warm-up run (smaller counts; it also sizes W1 and
W3 for peers too slow to drain the full counts within the time budget),
then RUNS measured runs, each on a fresh service and data folder, each with
its own loopback round-trip and fsync calibration and load averages.

The PostgreSQL-backed systems (graphile-worker, pg-boss, dispatch-postgres)
share one throw-away PostgreSQL server (``peers/pg_service.py``), started at
first use and stopped at the end, with a fresh database per workload.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import common
from peers import dispatch_peer
from peers.apalis_peer import ApalisPeer
from peers.beanstalk_peer import Beanstalk
from peers.base import LEVELS
from peers.celery_peer import CeleryPeer
from peers.dramatiq_peer import DramatiqPeer
from peers.gearman_peer import Gearman
from peers import node_peers, pg_service
from peers.node_peers import BullmqPeer, GraphilePeer, PgBossPeer
from peers.rq_peer import RqPeer

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = {
    "dispatch": None,
    "dispatch-postgres": None,
    "beanstalkd": Beanstalk,
    "gearmand": Gearman,
    "celery": CeleryPeer,
    "rq": RqPeer,
    "dramatiq": DramatiqPeer,
    "apalis": ApalisPeer,
    "bullmq": BullmqPeer,
    "graphile-worker": GraphilePeer,
    "pg-boss": PgBossPeer,
}
# Dispatch itself, measured by dispatch-bench: on SQLite, and on PostgreSQL.
DISPATCH = ("dispatch", "dispatch-postgres")
NODE_PEERS = ("bullmq", "graphile-worker", "pg-boss")
WORKLOADS = ("W1", "W2", "W3", "W4")
# W2 stops going up once the p99 passes this, or the senders fall behind.
SATURATED_P99_MS = 1000.0


def log(msg):
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run, small counts (for development)")
    p.add_argument("--only", default=",".join(PEERS), help="peers, comma-separated")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--in-flight", type=int, default=16, help="W2 sending threads")
    p.add_argument("--w1-tasks", type=int, default=100_000)
    p.add_argument("--w3-tasks", type=int, default=20_000)
    p.add_argument("--w4-tasks", type=int, default=10_000)
    p.add_argument("--rates", default="1000,5000,10000,20000")
    p.add_argument("--w2-seconds", type=int, default=3)
    p.add_argument("--pg-replicas", type=int, default=1,
                   help="dispatch-postgres: replicas on the database (one leads, the others stand by)")
    p.add_argument("--budget", type=float, default=15.0,
                   help="seconds of work per W1/W3/W4 run for slow peers (sized from the warm-up)")
    p.add_argument("--label", default="", help="a note on this run, shown in the report")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--append", metavar="RESULTS_JSON",
                   help="add this invocation's peers to an earlier result file (same settings) instead of a new one")
    a = p.parse_args()
    if a.quick:
        a.runs = 1
        a.w1_tasks = min(a.w1_tasks, 20_000)
        a.w3_tasks = min(a.w3_tasks, 5_000)
        a.w4_tasks = min(a.w4_tasks, 1_000)
        a.w2_seconds = 1
        a.budget = min(a.budget, 5.0)
    a.only = [x for x in a.only.split(",") if x]
    a.workloads = [x for x in a.workloads.split(",") if x]
    a.levels = [x for x in a.levels.split(",") if x]
    a.rates = [int(x) for x in a.rates.split(",") if x]
    for x in a.only:
        if x not in PEERS:
            p.error(f"unknown peer {x}")
    return a


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split(":", 1)[1].split()[0])
            mem = f"{kib / (1024 * 1024):.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "memory": mem,
            "os": platform.platform(), "python": platform.python_version()}


def calibrate(tmp):
    return {"loopback_rtt": common.loopback_rtt_us(), "fsync": common.fsync_ms(tmp), "loadavg": common.loadavg()}


# ---------------------------------------------------------------- Python peers

class Run:
    """One measured (or warm-up) run of one peer at one level."""

    def __init__(self, peer, level, args, procs):
        self.peer, self.level, self.args, self.procs = peer, level, args, procs

    def workers(self, stats_dir):
        argv, extra = self.peer.worker_command(self.args.slots, stats_dir)
        env = dict(os.environ, PEER_STATS_DIR=stats_dir, PYTHONPATH=HERE, **extra)
        return [
            self.procs.start(argv, os.path.join(stats_dir, f"worker-{i}.out"), env=env, cwd=HERE)
            for i in range(self.args.workers)
        ]

    def stop(self, ps):
        for p in ps:
            self.procs.stop(p)

    def drain(self, stats_dir, n, sleep_ms, timeout):
        """Queues n tasks, starts the workers, waits; (done, seconds)."""
        os.makedirs(stats_dir)
        self.peer.enqueue(n, sleep_ms)
        ps = self.workers(stats_dir)
        try:
            done = common.wait_done(stats_dir, n, timeout, ps)
        finally:
            self.stop(ps)
        recs = common.read_records(stats_dir)
        if not recs:
            raise RuntimeError("no task ran")
        seconds = (max(r[1] for r in recs) - min(r[0] for r in recs)) / 1e6
        return len(recs) if done < n else n, max(seconds, 1e-6)

    def w1(self, tmp, n):
        done, secs = self.drain(os.path.join(tmp, "w1"), n, 0, timeout=self.args.budget * 4 + 30)
        return {"tasks": n, "done": done, "seconds": secs, "tasks_per_s": done / secs, "partial": done < n}

    def w3(self, tmp, n):
        done, secs = self.drain(os.path.join(tmp, "w3"), n, 1, timeout=self.args.budget * 4 + 30)
        ideal = n * 0.001 / (self.args.workers * self.args.slots)
        return {"tasks": n, "done": done, "seconds": secs, "ideal_seconds": ideal,
                "vs_ideal": secs / ideal, "tasks_per_s": done / secs, "partial": done < n}

    def ready(self, stats_dir, ps):
        """Sends a few tasks and waits for them: the workers are connected."""
        sent = self.peer.open_loop(500, 0.1, 1)["sent"]
        if common.wait_done(stats_dir, sent, 60, ps) < sent:
            raise RuntimeError("the workers did not start within 60 s")
        return sent

    def w2_w4(self, tmp, rates, w4_n, do_w2, do_w4):
        stats_dir = os.path.join(tmp, "w2")
        os.makedirs(stats_dir)
        ps = self.workers(stats_dir)
        out = {}
        try:
            expected = self.ready(stats_dir, ps)
            if do_w2:
                steps = []
                for rate in rates:
                    begin = common.now_us()
                    sent = self.peer.open_loop(rate, self.args.w2_seconds, self.args.in_flight)
                    expected += sent["sent"]
                    # A saturated peer is not waited for beyond the budget.
                    done = common.wait_done(stats_dir, expected, self.args.budget + self.args.w2_seconds, ps)
                    recs = [r for r in common.read_records(stats_dir) if r[2] >= begin]
                    step = {"rate": rate, **sent, "achieved_rate": sent["sent"] / max(sent["seconds"], 1e-9),
                            **common.latency_summary([r[0] - r[2] for r in recs])}
                    if done < expected:
                        step["lost_or_late"] = expected - done
                        expected = done
                    steps.append(step)
                    if saturated(step):
                        break
                out["W2"] = {"steps": steps}
            if do_w4:
                samples = self.peer.roundtrip(w4_n, self.args.budget)
                total = sum(samples) / 1e6
                out["W4"] = {"count": len(samples), "seconds": total, "per_s": len(samples) / max(total, 1e-9),
                             **common.latency_summary(samples)}
        finally:
            self.stop(ps)
        return out


def saturated(step):
    p99 = step.get("p99_ms")
    return (p99 is None or p99 > SATURATED_P99_MS or step["achieved_rate"] < 0.9 * step["rate"]
            or step.get("lost_or_late", 0) > 0)


def python_peer_run(peer, level, args, sizes, warm):
    """One run: each workload on a fresh service and data folder (a
    saturated W2 leaves a backlog that must not delay W4)."""
    tmp = tempfile.mkdtemp(prefix=f"peers-{peer.name}-")
    record = {"calibration": calibrate(tmp)}
    wl = args.workloads
    try:
        for workload in ("W1", "W3", "W2", "W4"):
            if workload not in wl or workload in peer.workloads_na:
                continue
            if warm and workload in ("W2", "W4"):
                # Their own first tasks warm the workers up; the warm-up
                # run is for W1 and W3 (and sizes them).
                continue
            procs = common.Processes()
            wtmp = os.path.join(tmp, workload.lower() + "-service")
            os.makedirs(wtmp)
            try:
                peer.start(level, wtmp, procs)
                run = Run(peer, level, args, procs)
                if workload == "W1":
                    record["W1"] = run.w1(wtmp, sizes["W1"])
                elif workload == "W3":
                    record["W3"] = run.w3(wtmp, sizes["W3"])
                else:
                    rates = args.rates[:1] if warm else args.rates
                    record.update(run.w2_w4(wtmp, rates, sizes["W4"], workload == "W2", workload == "W4"))
            finally:
                try:
                    peer.close()
                except Exception:
                    pass
                procs.stop_all()
    finally:
        record["calibration"]["loadavg_end"] = common.loadavg()
        shutil.rmtree(tmp, ignore_errors=True)
    return record


# -------------------------------------------------------------------- Dispatch

def dispatch_bench(level, args, postgres, **kw):
    """One dispatch-bench invocation; on a fresh PostgreSQL database for
    dispatch-postgres."""
    if not postgres:
        return dispatch_peer.run(level, **kw)
    name, url = pg_service.SERVER.fresh_database(level)
    try:
        return dispatch_peer.run(level, store_url=url, replicas=args.pg_replicas, **kw)
    finally:
        pg_service.SERVER.drop_database(name)


def first_start(phase, what):
    """A dispatch-bench phase's time from the first task's start to the
    last one's end."""
    span = phase.get("from_first_start")
    if not span:
        raise RuntimeError(f"dispatch-bench reported no first start and last end for {what} "
                           "(rebuild it: cargo build --release -p dispatch-bench)")
    return span


def dispatch_run(level, args, sizes, warm, postgres=False):
    if warm:
        # W1 and W3 as for every peer, and W4 to size it (a durable round
        # trip waits for the disk twice).
        args = argparse.Namespace(**{**vars(args), "workloads": [w for w in args.workloads if w != "W2"]})
    tmp = tempfile.mkdtemp(prefix="peers-dispatch-")
    record = {"calibration": calibrate(tmp)}
    shutil.rmtree(tmp, ignore_errors=True)
    wl = args.workloads
    common_args = dict(workers=args.workers, slots=args.slots, in_flight=args.in_flight)
    try:
        first = dispatch_bench(
            level, args, postgres, w1_tasks=sizes["W1"] if "W1" in wl else 0, rate=1, seconds=0,
            w3_tasks=sizes["W3"] if "W3" in wl else 0, w4_tasks=sizes["W4"] if "W4" in wl else 0, **common_args)
        if "W1" in wl:
            d = first["drain"]
            span = first_start(d, "the drain")
            record["W1"] = {"tasks": sizes["W1"], "done": sizes["W1"], "seconds": span["seconds"],
                            "tasks_per_s": span["tasks_per_s"], "partial": False,
                            "seconds_from_launch": d["seconds"], "tasks_per_s_from_launch": d["tasks_per_s"]}
        if "W3" in wl and first.get("sleep"):
            s = first["sleep"]
            span = first_start(s, "the sleep tasks")
            record["W3"] = {"tasks": s["tasks"], "done": s["tasks"], "seconds": span["seconds"],
                            "ideal_seconds": s["ideal_seconds"], "vs_ideal": span["seconds"] / s["ideal_seconds"],
                            "tasks_per_s": span["tasks_per_s"], "partial": False,
                            "seconds_from_resume": s["seconds"]}
        if "W4" in wl and first.get("roundtrip"):
            r = first["roundtrip"]
            record["W4"] = {"count": r["count"], "seconds": r["seconds"], "per_s": r["per_s"],
                            "samples": r["count"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                            "p999_ms": r["p999_ms"]}
        if "W2" in wl:
            steps = []
            for rate in (args.rates[:1] if warm else args.rates):
                rep = dispatch_bench(level, args, postgres, w1_tasks=0, rate=rate, seconds=args.w2_seconds,
                                     w3_tasks=0, w4_tasks=0, **common_args)
                lat = rep["latency"]
                step = {"rate": rate, "sent": lat["sent"], "late": lat["late_sends"],
                        "seconds": lat["sent"] / max(lat["achieved_rate"], 1e-9),
                        "achieved_rate": lat["achieved_rate"], "samples": lat["samples"],
                        "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "p999_ms": lat["p999_ms"],
                        "max_ms": lat["max_ms"]}
                if lat["samples"] < lat["sent"]:
                    step["lost_or_late"] = lat["sent"] - lat["samples"]
                steps.append(step)
                if saturated(step):
                    break
            record["W2"] = {"steps": steps}
    finally:
        record["calibration"]["loadavg_end"] = common.loadavg()
    return record


# ------------------------------------------------------------------ the matrix

def warm_sizes(args):
    return {"W1": min(args.w1_tasks, 2_000), "W3": min(args.w3_tasks, 1_000), "W4": min(args.w4_tasks, 100)}


# The fewest tasks a measured W1 or W3 run gets, however slow the peer.
FLOOR = 500


def sized_from(warm, args, is_dispatch):
    """Full counts, or for a slow peer what fits in the budget at its
    warm-up rate (never fewer than the warm-up's)."""
    sizes = {"W1": args.w1_tasks, "W3": args.w3_tasks, "W4": args.w4_tasks}
    if is_dispatch:
        if "W4" in warm:
            sizes["W4"] = int(min(args.w4_tasks, max(100, warm["W4"]["per_s"] * args.budget)))
        return sizes
    if "W1" in warm:
        sizes["W1"] = int(min(args.w1_tasks, max(FLOOR, warm["W1"]["tasks_per_s"] * args.budget)))
    if "W3" in warm:
        sizes["W3"] = int(min(args.w3_tasks, max(FLOOR, warm["W3"]["tasks_per_s"] * args.budget)))
    return sizes


def run_cell(name, level, args):
    """Warm-up plus measured runs of one peer at one level."""
    is_dispatch = name in DISPATCH
    if name in NODE_PEERS and node_peers.available():
        raise RuntimeError(node_peers.available())
    runs = []
    sizes = warm_sizes(args)
    peer = None if is_dispatch else PEERS[name]()
    for i in range(args.runs + 1):
        warm = i == 0
        log(f"{name} {level}: {'warm-up' if warm else f'run {i}/{args.runs}'} {sizes}")
        t0 = time.monotonic()
        if is_dispatch:
            rec = dispatch_run(level, args, sizes, warm, postgres=name == "dispatch-postgres")
        else:
            rec = python_peer_run(peer, level, args, sizes, warm)
        rec["wall_seconds"] = time.monotonic() - t0
        if warm:
            sizes = sized_from(rec, args, is_dispatch)
        else:
            runs.append(rec)
    return runs


def versions(names):
    out = {}
    for name in names:
        try:
            if name == "dispatch-postgres":
                out.update(dispatch_peer.versions())
                out["postgresql"] = pg_service.SERVER.version()
            elif name == "dispatch":
                out.update(dispatch_peer.versions())
            else:
                out.update(PEERS[name]().versions())
        except Exception as e:  # a version we cannot read is not fatal
            out[name] = f"unknown ({e})"
    out["python"] = platform.python_version()
    return out


def na_reason(name, level, workload):
    if name in DISPATCH:
        return dispatch_peer.LEVELS.get(level)
    cls = PEERS[name]
    return cls.levels.get(level) or cls.workloads_na.get(workload)


def setting(name, level):
    if name == "dispatch":
        return dispatch_peer.SETTING.get(level, "")
    if name == "dispatch-postgres":
        return dispatch_peer.POSTGRES_SETTING.get(level, "")
    return PEERS[name].setting.get(level, "")


def run_matrix(args, doc, path):
    """Every peer at every level, each cell saved as soon as it is done."""
    for name in args.only:
        for level in args.levels:
            reasons = {w: na_reason(name, level, w) for w in args.workloads}
            cell = {"peer": name, "level": level, "setting": setting(name, level),
                    "na": {w: r for w, r in reasons.items() if r}, "runs": []}
            if all(reasons.values()):
                log(f"{name} {level}: n/a")
            else:
                try:
                    cell["runs"] = run_cell(name, level, args)
                except Exception as e:
                    log(f"{name} {level} failed: {e}")
                    traceback.print_exc()
                    cell["error"] = f"{type(e).__name__}: {e}"
            doc["cells"].append(cell)
            with open(path, "w") as f:
                json.dump(doc, f, indent=1)


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.append or os.path.join(args.out, f"{stamp}.json")
    started = time.time()
    earlier = None
    if args.append:
        with open(args.append) as f:
            earlier = json.load(f)
    doc = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": args.label or ("quick" if args.quick else "full"),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine(),
        "loadavg_start": common.loadavg(),
        "versions": versions(args.only),
        "cells": [],
    }
    if earlier:
        # One report: the earlier invocation's settings, peers and load, plus
        # this one's peers; each invocation's span is kept.
        invocations = earlier.get("invocations") or [
            {k: earlier.get(k) for k in ("started", "wall_seconds", "loadavg_start", "loadavg_end")}
            | {"peers": earlier["args"]["only"]}]
        earlier["versions"].update(doc["versions"])
        earlier["args"]["only"] = earlier["args"]["only"] + args.only
        earlier["invocations"] = invocations
        cells_before = earlier["cells"]
        doc = earlier
        doc["cells"] = list(cells_before)
        this = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "loadavg_start": common.loadavg(), "peers": args.only}
        doc["invocations"].append(this)
    # SIGTERM from the wrapper (or Ctrl-C) stops the children via finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run_matrix(args, doc, path)
    finally:
        # The shared PostgreSQL server, if a peer started it.
        pg_service.stop()
    if earlier:
        this["loadavg_end"] = common.loadavg()
        this["wall_seconds"] = time.time() - started
        doc["loadavg_end"] = this["loadavg_end"]
        doc["wall_seconds"] = sum(i.get("wall_seconds") or 0 for i in doc["invocations"])
    else:
        doc["loadavg_end"] = common.loadavg()
        doc["wall_seconds"] = time.time() - started
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    log(f"results in {path} ({doc['wall_seconds']:.0f} s)")
    print(path)


if __name__ == "__main__":
    main()
