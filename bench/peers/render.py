"""Renders a peer benchmark result file (``results/<timestamp>.json``) as
docs/benchmarks.md, and adds the chart's data to the file for
``dispatch-bench chart`` to draw.

Usage: render.py RESULTS.json DOCS_MD CHART_PNG_NAME [MORE_RESULTS.json...]

With more result files (invocations with the same settings for other
peers), their peers are merged into RESULTS.json first.
"""

import json
import statistics
import sys

LEVEL_TEXT = {
    "memory": "memory (no fsync)",
    "relaxed": "relaxed (fsync at most every second)",
    "durable": "durable (fsync before acknowledging)",
}


# Dispatch's own rows (on SQLite, and on PostgreSQL); every other row is a
# peer.
DISPATCH = ("dispatch", "dispatch-postgres")
# The peers on PostgreSQL, compared with Dispatch on PostgreSQL.
POSTGRES_PEERS = ("graphile-worker", "pg-boss")


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(v, digits=None):
    if v is None:
        return "-"
    if digits is None:
        if v >= 100:
            return f"{v:,.0f}"
        if v >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return f"{v:.{digits}f}"


def fmt_range(t, digits=None):
    if t is None:
        return "-"
    m, lo, hi = t
    return f"{fmt(m, digits)} ({fmt(lo, digits)}-{fmt(hi, digits)})"


def cell_label(c):
    return f"{c['peer']} {c['level']}"


def summarize(doc):
    """Per cell: W1, W2 (per rate), W3, W4 medians with min and max."""
    out = []
    for c in doc["cells"]:
        runs = c["runs"]
        s = {"cell": c}
        w1 = [r["W1"] for r in runs if "W1" in r]
        if w1:
            s["W1"] = {"rate": med([x["tasks_per_s"] for x in w1]), "tasks": w1[0]["tasks"],
                       "partial": any(x["partial"] for x in w1)}
        w3 = [r["W3"] for r in runs if "W3" in r]
        if w3:
            s["W3"] = {"seconds": med([x["seconds"] for x in w3]), "vs_ideal": med([x["vs_ideal"] for x in w3]),
                       "ideal": w3[0]["ideal_seconds"], "tasks": w3[0]["tasks"],
                       "partial": any(x["partial"] for x in w3)}
        w4 = [r["W4"] for r in runs if "W4" in r]
        if w4:
            s["W4"] = {"per_s": med([x["per_s"] for x in w4]), "p50": med([x["p50_ms"] for x in w4]),
                       "p99": med([x["p99_ms"] for x in w4]), "count": w4[0]["count"]}
        w2 = [r["W2"]["steps"] for r in runs if "W2" in r]
        if w2:
            rates = {}
            for steps in w2:
                for st in steps:
                    rates.setdefault(st["rate"], []).append(st)
            s["W2"] = {}
            for rate, sts in sorted(rates.items()):
                s["W2"][rate] = {
                    "p50": med([x["p50_ms"] for x in sts]), "p99": med([x["p99_ms"] for x in sts]),
                    "p999": med([x["p999_ms"] for x in sts]), "achieved": med([x["achieved_rate"] for x in sts]),
                    "runs": len(sts), "of": len(w2),
                    "saturated": sum(1 for x in sts if is_saturated(x)) * 2 > len(sts),
                }
        out.append(s)
    return out


def is_saturated(step):
    p99 = step.get("p99_ms")
    return (p99 is None or p99 > 1000.0 or step["achieved_rate"] < 0.9 * step["rate"]
            or step.get("lost_or_late", 0) > 0)


def na_text(c, workload):
    if c.get("error"):
        return f"failed: {c['error']}"
    return c["na"].get(workload)


def best_peer(summaries, level, key, higher_better, any_level=False, among=None):
    best = None
    for s in summaries:
        c = s["cell"]
        if c["peer"] in DISPATCH or (not any_level and c["level"] != level):
            continue
        if among is not None and c["peer"] not in among:
            continue
        v = key(s)
        if v is None:
            continue
        if best is None or (v > best[0] if higher_better else v < best[0]):
            best = (v, cell_label(c))
    return best


def dispatch_at(summaries, level, key, name="dispatch"):
    for s in summaries:
        if s["cell"]["peer"] == name and s["cell"]["level"] == level:
            return key(s)
    return None


def ratio_lines(summaries, levels, key, higher_better, unit_note):
    lines = []
    for level in levels:
        d = dispatch_at(summaries, level, key)
        b = best_peer(summaries, level, key, higher_better)
        if d is None or b is None:
            lines.append(f"- {level}: n/a (no figure for Dispatch or for any peer at this level)")
            continue
        lines.append(f"- {level}: Dispatch {fmt(d)} / best peer ({b[1]}) {fmt(b[0])} = **{d / b[0]:.2f}** {unit_note}")
    # On PostgreSQL: Dispatch's PostgreSQL store against the PostgreSQL
    # peers, on the same server (only when the run has them).
    for level in levels:
        d = dispatch_at(summaries, level, key, "dispatch-postgres")
        b = best_peer(summaries, level, key, higher_better, among=POSTGRES_PEERS)
        if d is None or b is None:
            continue
        lines.append(f"- {level}, on PostgreSQL: dispatch-postgres {fmt(d)} / best PostgreSQL peer ({b[1]}) "
                     f"{fmt(b[0])} = **{d / b[0]:.2f}** {unit_note}")
    return lines


def w1_key(s):
    return s["W1"]["rate"][0] if "W1" in s else None


def w3_key(s):
    return s["W3"]["vs_ideal"][0] if "W3" in s else None


def w4_key(s):
    return s["W4"]["per_s"][0] if "W4" in s else None


def w2_key(rate):
    def k(s):
        r = s.get("W2", {}).get(rate)
        if not r or r["saturated"] or r["p99"] is None:
            return None
        return r["p99"][0]
    return k


def render(doc, png_name):
    sums = summarize(doc)
    a = doc["args"]
    levels = a["levels"]
    cmp_levels = [lv for lv in levels if lv != "memory"]
    m = doc["machine"]
    L = []
    L.append("# Benchmarks against peers")
    L.append("")
    L.append("Generated by `bench/peers/run` from "
             f"`bench/peers/results/{doc.get('file', '?')}`; do not edit by hand.")
    L.append("")
    label = doc.get("label", "")
    L.append(f"**Run:** {label}; started {doc['started']}, {fmt(doc.get('wall_seconds', 0) / 60, 1)} min; "
             f"{a['runs']} measured run(s) per peer and level after one warm-up; "
             f"{a['workers']} worker processes x {a['slots']} slots for every peer; "
             f"W2 from {a['in_flight']} sending threads (connections), {a['w2_seconds']} s per rate.")
    L.append("")
    L.append(f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Linux {m['kernel']}, "
             f"Python {m['python']}. Everything (services, clients, workers, the driver) shares these cores, "
             "on loopback.")
    for inv in doc.get("invocations", []):
        L.append("")
        L.append(f"- invocation started {inv['started']} ({fmt((inv.get('wall_seconds') or 0) / 60, 1)} min): "
                 f"{', '.join(inv['peers'])}; load average {inv['loadavg_start'][0]:.1f} -> "
                 f"{(inv.get('loadavg_end') or [0])[0]:.1f}")
    if doc.get("note"):
        L.append("")
        L.append(doc["note"])
    la0, la1 = doc.get("loadavg_start", [0])[0], doc.get("loadavg_end", [0])[0]
    L.append("")
    L.append(f"**Load:** 1-minute load average {la0:.1f} at the start and {la1:.1f} at the end; it counts the "
             "benchmark's own processes (services, workers, sending threads) as well as anything else the "
             "machine ran (each run's own figures are in the result file). The machine is a shared VM: treat "
             "every figure as noisy and compare peers within this one run, not with other runs.")
    L.append("")
    L.append("![peer benchmark](" + png_name + ")")
    L.append("")
    L.append("Bars are medians, whiskers the fastest and slowest run; Dispatch in orange.")
    L.append("")

    # Calibration
    rtt = [r["calibration"]["loopback_rtt"]["p50_us"] for c in doc["cells"] for r in c["runs"]]
    fs = [r["calibration"]["fsync"]["p50_ms"] for c in doc["cells"] for r in c["runs"]]
    fs99 = [r["calibration"]["fsync"]["p99_ms"] for c in doc["cells"] for r in c["runs"]]
    loads = [r["calibration"]["loadavg"][0] for c in doc["cells"] for r in c["runs"]]
    L.append("## Calibration (recorded before every run)")
    L.append("")
    L.append("| | median | min | max |")
    L.append("|---|---|---|---|")
    for name, vals in (("loopback TCP round trip p50, us", rtt), ("4 KiB append + fsync p50, ms", fs),
                       ("4 KiB append + fsync p99, ms", fs99), ("1-minute load average at run start", loads)):
        t = med(vals)
        if t:
            L.append(f"| {name} | {fmt(t[0])} | {fmt(t[1])} | {fmt(t[2])} |")
    L.append("")

    # Levels
    L.append("## Durability levels")
    L.append("")
    L.append("| peer | " + " | ".join(LEVEL_TEXT[lv] for lv in levels) + " |")
    L.append("|---|" + "---|" * len(levels))
    for peer in a["only"]:
        row = []
        for lv in levels:
            c = next((c for c in doc["cells"] if c["peer"] == peer and c["level"] == lv), None)
            if c is None:
                row.append("-")
            elif all(c["na"].get(w) for w in a["workloads"]):
                row.append("n/a: " + next(iter(c["na"].values())))
            else:
                row.append(c["setting"] or "yes")
        L.append(f"| {peer} | " + " | ".join(row) + " |")
    L.append("")

    # W1
    if "W1" in a["workloads"]:
        L.append("## W1: drain")
        L.append("")
        L.append(f"Tasks queued first (up to {a['w1_tasks']:,}), then the workers start; tasks/s from the first "
                 "task's start to the last one's end, as stamped by the workers. A peer whose warm-up "
                 f"showed it could not drain the full count in about {a['budget']:.0f} s was given what fits "
                 "(the `tasks` column); `partial` means the run stopped at its time limit and the rate is "
                 "over the tasks done.")
        L.append("")
        L.append("| peer | level | tasks | tasks/s: median (min-max) |")
        L.append("|---|---|---|---|")
        for s in sums:
            c = s["cell"]
            if "W1" in s:
                part = " partial" if s["W1"]["partial"] else ""
                L.append(f"| {c['peer']} | {c['level']} | {s['W1']['tasks']:,}{part} | {fmt_range(s['W1']['rate'])} |")
            elif na_text(c, "W1"):
                L.append(f"| {c['peer']} | {c['level']} | | n/a: {na_text(c, 'W1')} |")
        L.append("")
        L.append("Dispatch / best peer at the same level (higher is better):")
        L.append("")
        L += ratio_lines(sums, cmp_levels, w1_key, True, "")
        b = best_peer(sums, None, w1_key, True, any_level=True)
        d = dispatch_at(sums, "durable", w1_key)
        if b and d:
            L.append(f"- Dispatch durable / fastest peer at any level ({b[1]}): **{d / b[0]:.2f}**")
        L.append("")

    # W2
    if "W2" in a["workloads"]:
        L.append("## W2: submit-to-start latency, open loop")
        L.append("")
        L.append("Each task carries its scheduled send time; latency is the worker's start stamp minus that "
                 "time, so a sender that falls behind counts against the peer (no coordinated omission). "
                 "Rates go up until a peer saturates (p99 over 1 s, sends under 90% of the rate, or tasks "
                 "not started within the wait): its last row is marked `saturated`, higher rates were not run. "
                 "Figures in ms: p50 / p99 / p99.9, medians over runs.")
        L.append("")
        rates = a["rates"]
        L.append("| peer | level | " + " | ".join(f"{r:,}/s" for r in rates) + " |")
        L.append("|---|---|" + "---|" * len(rates))
        for s in sums:
            c = s["cell"]
            if "W2" in s:
                row = []
                for r in rates:
                    x = s["W2"].get(r)
                    if not x:
                        row.append("-")
                        continue
                    txt = f"{fmt(x['p50'] and x['p50'][0])} / {fmt(x['p99'] and x['p99'][0])} / {fmt(x['p999'] and x['p999'][0])}"
                    if x["saturated"]:
                        txt += f" saturated ({fmt(x['achieved'][0])}/s sent)"
                    row.append(txt)
                L.append(f"| {c['peer']} | {c['level']} | " + " | ".join(row) + " |")
            elif na_text(c, "W2"):
                L.append(f"| {c['peer']} | {c['level']} | n/a: {na_text(c, 'W2')} |" + " |" * (len(rates) - 1))
        L.append("")
        for r in rates:
            lines = ratio_lines(sums, cmp_levels, w2_key(r), False, "(p99; lower is better)")
            if any("**" in x for x in lines):
                L.append(f"Dispatch / best unsaturated peer at {r:,}/s, p99:")
                L.append("")
                L += lines
                L.append("")

    # W3
    if "W3" in a["workloads"]:
        L.append("## W3: 1 ms tasks")
        L.append("")
        L.append(f"Tasks that sleep 1 ms (up to {a['w3_tasks']:,}), queued, then {a['workers']} workers x "
                 f"{a['slots']} slots; time from the first start to the last end against the ideal, "
                 f"tasks x 1 ms / {a['workers'] * a['slots']} slots.")
        L.append("")
        L.append("| peer | level | tasks | seconds | x ideal: median (min-max) |")
        L.append("|---|---|---|---|---|")
        for s in sums:
            c = s["cell"]
            if "W3" in s:
                part = " partial" if s["W3"]["partial"] else ""
                L.append(f"| {c['peer']} | {c['level']} | {s['W3']['tasks']:,}{part} | {fmt(s['W3']['seconds'][0])} "
                         f"(ideal {fmt(s['W3']['ideal'])}) | {fmt_range(s['W3']['vs_ideal'])} |")
            elif na_text(c, "W3"):
                L.append(f"| {c['peer']} | {c['level']} | | | n/a: {na_text(c, 'W3')} |")
        L.append("")
        L.append("Dispatch / best peer, time over ideal (lower is better):")
        L.append("")
        L += ratio_lines(sums, cmp_levels, w3_key, False, "")
        L.append("")

    # W4
    if "W4" in a["workloads"]:
        L.append("## W4: submit and wait for the result")
        L.append("")
        L.append(f"One client, one task at a time: submit, wait for its result, repeat ({a['w4_tasks']:,} "
                 f"times, or as many as fit in about {a['budget']:.0f} s).")
        L.append("")
        L.append("| peer | level | round trips | per s: median (min-max) | p50 ms | p99 ms |")
        L.append("|---|---|---|---|---|---|")
        for s in sums:
            c = s["cell"]
            if "W4" in s:
                w = s["W4"]
                L.append(f"| {c['peer']} | {c['level']} | {w['count']:,} | {fmt_range(w['per_s'])} | "
                         f"{fmt(w['p50'][0])} | {fmt(w['p99'][0])} |")
            elif na_text(c, "W4"):
                L.append(f"| {c['peer']} | {c['level']} | | n/a: {na_text(c, 'W4')} | | |")
        L.append("")
        L.append("Dispatch / best peer, round trips per second (higher is better):")
        L.append("")
        L += ratio_lines(sums, cmp_levels, w4_key, True, "")
        L.append("")

    # Versions and method
    L.append("## Versions")
    L.append("")
    L.append("| component | version |")
    L.append("|---|---|")
    for k, v in sorted(doc["versions"].items()):
        L.append(f"| {k} | {v} |")
    L.append("")
    L.append("## How it is measured")
    L.append("")
    L.append("- `bench/peers/run` installs the Debian packages (beanstalkd, gearman-job-server, redis-server, "
             "postgresql, nodejs) if missing, a virtual environment with the pinned "
             "`bench/peers/requirements.txt`, the Node peers with `npm ci` from "
             "`bench/peers/node/package-lock.json`, builds the apalis peer (`bench/peers/apalis`, its own "
             "Cargo.lock) and Dispatch in release mode, then runs `bench/peers/driver.py`.")
    L.append("- Every service runs on a free 127.0.0.1 port with its own temporary data folder, is started "
             "fresh for each workload of each run, and is stopped by PID (its process group) afterwards. "
             "The exception is PostgreSQL: graphile-worker, pg-boss and dispatch-postgres share one "
             "throw-away server (fsync on; `synchronous_commit=on` durable, `off` relaxed), with a fresh "
             "database for each workload of each run, stopped at the end.")
    L.append("- Every worker process, whatever the peer, stamps each task's start and end and appends them "
             "to its own stats file; the driver counts and times from those files only. Dispatch is measured "
             "by `dispatch-bench`, whose workers stamp the same way: W1 and W3 count, for every system, from "
             "the first task's start to the last one's end (not from the worker processes' launch).")
    L.append("- Python clients and workers: beanstalkd through greenstalk, gearmand through a small "
             "raw-protocol client (`peers/gearman_peer.py`; the `gear` library is much slower), Celery with "
             "the threads pool, RQ with `SimpleWorker` (one job at a time per process; the default worker "
             "forks per job), Dramatiq with one process of N threads per worker. apalis and Dispatch "
             "workers are Rust; apalis polls its table every 10 ms (its default is 100 ms).")
    if any(p in a["only"] for p in ("bullmq", "graphile-worker", "pg-boss")):
        L.append("- Node peers (Node " + doc["versions"].get("node", "?") + "): BullMQ with one `Worker` of "
                 "concurrency N per process, jobs removed on completion, round trips with "
                 "`waitUntilFinished`; graphile-worker with its performance page's batching (local queue of 500, "
                 "batched completions), new jobs woken by LISTEN/NOTIFY; pg-boss with N `work()` loops per "
                 "process, batches of 16, polling every 0.5 s when idle (its minimum) and at once after a full "
                 "batch. graphile-worker and pg-boss have no wait for a result: their round trips poll the job's "
                 "row every 1 ms until it is complete.")
    L.append("- Dispatch's workers use the gRPC streaming protocol with a credit of "
             f"{a['slots']} tasks each (its own benchmark's default is 256, which drains faster).")
    L.append("")
    return "\n".join(L) + "\n", chart(sums, a)


def chart(sums, a):
    panels = []

    def bars(key, triple):
        out = []
        for s in sums:
            t = triple(s)
            if t is None:
                continue
            c = s["cell"]
            out.append({"label": cell_label(c), "value": t[0], "min": t[1], "max": t[2],
                        "dispatch": c["peer"] in DISPATCH})
        return out

    if "W1" in a["workloads"]:
        panels.append({"title": "W1 drain, 2 workers", "unit": "tasks/s, log scale", "log": True,
                       "bars": bars("W1", lambda s: s["W1"]["rate"] if "W1" in s else None)})
    if "W2" in a["workloads"]:
        rate = 5000 if 5000 in a["rates"] else a["rates"][0]

        def p99(s):
            r = s.get("W2", {}).get(rate)
            if not r or r["saturated"] or r["p99"] is None:
                return None
            return r["p99"]
        panels.append({"title": f"W2 submit-to-start p99 at {rate:,}/s (unsaturated peers)",
                       "unit": "ms, log scale, lower is better", "log": True, "bars": bars("W2", p99)})
    if "W3" in a["workloads"]:
        panels.append({"title": "W3 1 ms tasks, time over ideal", "unit": "x ideal, lower is better",
                       "log": True, "bars": bars("W3", lambda s: s["W3"]["vs_ideal"] if "W3" in s else None)})
    if "W4" in a["workloads"]:
        panels.append({"title": "W4 submit and wait, one client", "unit": "round trips/s, log scale",
                       "log": True, "bars": bars("W4", lambda s: s["W4"]["per_s"] if "W4" in s else None)})
    return {"title": "Dispatch and peers on one 2-core machine (medians; see docs/benchmarks.md)", "panels": [p for p in panels if p["bars"]]}


def invocation(doc):
    return {"started": doc["started"], "wall_seconds": doc.get("wall_seconds"),
            "loadavg_start": doc.get("loadavg_start"), "loadavg_end": doc.get("loadavg_end"),
            "peers": list(doc["args"]["only"])}


def merge(doc, other):
    """Adds another invocation's peers (same settings) to ``doc``."""
    keep = ("runs", "workers", "slots", "in_flight", "w1_tasks", "w3_tasks", "w4_tasks", "rates", "w2_seconds", "budget")
    for k in keep:
        if doc["args"].get(k) != other["args"].get(k):
            raise SystemExit(f"cannot merge: {k} differs ({doc['args'].get(k)} vs {other['args'].get(k)})")
    if "invocations" not in doc:
        doc["invocations"] = [invocation(doc)]
    doc["invocations"].append(invocation(other))
    doc["args"]["only"] = doc["args"]["only"] + other["args"]["only"]
    doc["versions"].update(other["versions"])
    doc["cells"] += other["cells"]
    doc["wall_seconds"] = sum(i.get("wall_seconds") or 0 for i in doc["invocations"])
    doc["loadavg_end"] = other.get("loadavg_end")


def main():
    results, md, png_name = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(results) as f:
        doc = json.load(f)
    import os
    for extra in sys.argv[4:]:
        with open(extra) as f:
            merge(doc, json.load(f))
        os.unlink(extra)
    doc["file"] = os.path.basename(results)
    text, ch = render(doc, png_name)
    doc["chart"] = ch
    with open(results, "w") as f:
        json.dump(doc, f, indent=1)
    with open(md, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
