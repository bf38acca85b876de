// What every Node peer of the benchmark shares: the clock, the stats file,
// the task body, the open-loop pacer, the round-trip loop and the command
// line. The driver (bench/peers/driver.py) runs each peer's script as
// `node <peer>.mjs <command> [--option value ...]`:
//
// - `setup`: creates the schema or queue (not timed);
// - `enqueue --n N --sleep-ms MS`: loads N tasks (not timed);
// - `work --slots S`: one worker process until SIGTERM; every task appends
//   `start_us end_us sent_us` to `$PEER_STATS_DIR/w-<pid>.log`, flushed
//   every 50 ms, which is how the driver counts and times every peer;
// - `open-loop --rate R --secs S --in-flight K`: submits at a fixed rate
//   against a schedule, each task carrying its intended send time; prints
//   `{"sent", "late", "seconds"}` as JSON;
// - `roundtrip --n N --budget-secs B`: submits a task and waits for its
//   result, N times or until the budget is spent; prints
//   `{"samples_us": [...]}` as JSON.

import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** Microseconds since the Unix epoch, with sub-millisecond resolution. */
export function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** `--name value` pairs after the command; numbers where they parse. */
export function parseArgs(argv) {
  const [command, ...rest] = argv;
  const opts = {};
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i];
    if (!key.startsWith("--") || i + 1 >= rest.length) {
      throw new Error(`bad argument ${key}: expected --name value pairs`);
    }
    const value = rest[i + 1];
    opts[key.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] =
      value !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
  }
  return { command, opts };
}

/** This worker process's stats file, appended to every 50 ms. */
export class Recorder {
  constructor(dir = process.env.PEER_STATS_DIR) {
    if (!dir) {
      throw new Error("PEER_STATS_DIR is not set");
    }
    this.path = join(dir, `w-${process.pid}.log`);
    this.lines = [];
    this.timer = setInterval(() => this.flush(), 50);
  }

  record(startUs, sentUs) {
    this.lines.push(`${startUs} ${nowUs()} ${sentUs}\n`);
  }

  flush() {
    if (this.lines.length) {
      const text = this.lines.join("");
      this.lines = [];
      appendFileSync(this.path, text);
    }
  }
}

/** The benchmark's one task: stamp the start, sleep if asked, record. */
export async function runTask(recorder, data) {
  const start = nowUs();
  if (data.sleep_ms) {
    await sleep(data.sleep_ms);
  }
  recorder.record(start, data.sent_us || 0);
}

/** Ends the process on SIGTERM or SIGINT after `stop` and a last flush. */
export function stopOn(recorder, stop = async () => {}) {
  let stopping = false;
  const end = async () => {
    if (stopping) return;
    stopping = true;
    recorder.flush();
    const force = setTimeout(() => process.exit(0), 3000);
    force.unref();
    try {
      await stop();
    } catch (e) {
      console.error(`stopping: ${e}`);
    }
    recorder.flush();
    process.exit(0);
  };
  process.on("SIGTERM", end);
  process.on("SIGINT", end);
}

/**
 * Submits `rate` tasks a second for `secs` seconds, open loop: each task is
 * released at its scheduled time whatever happened to the previous ones,
 * with at most `inFlight` submissions outstanding (a task that has to wait
 * for one is late, and its latency still counts from its scheduled time).
 * `submit(sentUs)` sends one task. The pacer sleeps with the timer down to
 * 2 ms before a send and yields to the event loop (setImmediate) for the
 * rest, so that sends are not rounded to the timer's millisecond.
 */
export async function openLoop(submit, rate, secs, inFlight) {
  const total = Math.floor(rate * secs);
  const leadMs = 50;
  const startUs = nowUs() + leadMs * 1000;
  let late = 0;
  let outstanding = 0;
  let failure = null;
  let wake = null;
  const done = () => {
    outstanding -= 1;
    if (wake) {
      const w = wake;
      wake = null;
      w();
    }
  };
  const tick = () => new Promise((resolve) => setImmediate(resolve));
  for (let i = 0; i < total; i++) {
    if (failure) break;
    const targetUs = startUs + Math.floor((i * 1e6) / rate);
    for (;;) {
      const ahead = targetUs - nowUs();
      if (ahead <= 0) break;
      if (ahead > 2000) {
        await sleep((ahead - 2000) / 1000);
      } else {
        await tick();
      }
    }
    while (outstanding >= inFlight) {
      await new Promise((resolve) => {
        wake = resolve;
      });
    }
    if (nowUs() - targetUs > 1000) {
      late += 1;
    }
    outstanding += 1;
    submit(targetUs).then(done, (e) => {
      failure = failure || e;
      done();
    });
  }
  while (outstanding > 0) {
    await new Promise((resolve) => {
      wake = resolve;
    });
  }
  if (failure) {
    throw failure;
  }
  return { sent: total, late, seconds: (nowUs() - startUs) / 1e6 };
}

/**
 * Runs `once()` (submit one task and wait for its result) `n` times in a
 * row or until `budgetSecs` have passed; returns each round trip in
 * microseconds.
 */
export async function roundTrips(once, n, budgetSecs) {
  const samples = [];
  const stop = performance.now() + budgetSecs * 1000;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await once();
    samples.push(Math.round((performance.now() - t0) * 1000));
    if (performance.now() > stop) break;
  }
  return samples;
}

/** Polls `check()` until it is true, every `everyMs` (timer resolution). */
export async function pollUntil(check, everyMs, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (performance.now() > deadline) {
      throw new Error(`not done within ${timeoutMs} ms`);
    }
    await sleep(everyMs);
  }
}

/** Runs `main(command, opts)` and exits 1 with the error on failure. */
export function cli(main) {
  const { command, opts } = parseArgs(process.argv.slice(2));
  main(command, opts).catch((e) => {
    console.error(e && e.stack ? e.stack : e);
    process.exit(1);
  });
}

/** Prints one JSON line (the driver reads the last line of stdout). */
export function emit(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}
