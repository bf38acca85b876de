// pg-boss on PostgreSQL, for the peer benchmark (see common.mjs for the
// commands).
//
//   node pgboss-peer.mjs <command> --db postgres://USER@127.0.0.1:PORT/DB [...]
//
// pg-boss 10 runs jobs concurrently by calling `work()` several times, each
// call one polling loop. A worker process runs SLOTS loops; each fetches up
// to BATCH jobs per poll (`batchSize`) and runs them one after the other, so
// at most SLOTS jobs run at once. pg-boss has no notification of new jobs:
// an idle loop polls every 0.5 s, pg-boss's shortest interval; a loop whose
// fetch came back full asks for its next fetch at once (`notifyWorker`, the
// documented way to skip the interval) instead of waiting. The maintenance
// and scheduling timers are off in the workers (`supervise`, `schedule`).
//
// pg-boss has no call that waits for a job's result: a round trip sends a
// job, then polls it (`getJobById`) every 1 ms (the timer's resolution)
// until its state is `completed`.

import PgBoss from "pg-boss";

import { cli, emit, openLoop, pollUntil, Recorder, roundTrips, runTask, stopOn } from "./common.mjs";

const QUEUE = "bench";
const CHUNK = 1000;
const POLL_SECONDS = 0.5;

function boss(url, max, extra = {}) {
  const b = new PgBoss({
    connectionString: url,
    max,
    supervise: false,
    schedule: false,
    migrate: false,
    ...extra,
  });
  b.on("error", (e) => console.error(`pg-boss error: ${e.message || e}`));
  return b;
}

cli(async (command, o) => {
  if (command === "setup") {
    const b = boss(o.db, 2, { migrate: true });
    await b.start();
    await b.createQueue(QUEUE);
    await b.stop({ graceful: false, wait: true });
    return;
  }
  if (command === "work") {
    const recorder = new Recorder();
    const batch = o.batch || 16;
    const b = boss(o.db, o.slots + 2);
    await b.start();
    for (let i = 0; i < o.slots; i++) {
      let id = null;
      id = await b.work(QUEUE, { batchSize: batch, pollingIntervalSeconds: POLL_SECONDS }, async (jobs) => {
        for (const job of jobs) {
          await runTask(recorder, job.data);
        }
        if (jobs.length === batch && id) {
          b.notifyWorker(id);
        }
      });
    }
    stopOn(recorder, () => b.stop({ graceful: false, wait: false }));
    return;
  }
  const b = boss(o.db, Math.max(2, o.inFlight || 2));
  await b.start();
  try {
    if (command === "enqueue") {
      const data = { sent_us: 0, sleep_ms: o.sleepMs || 0 };
      for (let left = o.n; left > 0; left -= CHUNK) {
        const k = Math.min(CHUNK, left);
        await b.insert(Array.from({ length: k }, () => ({ name: QUEUE, data })));
      }
    } else if (command === "open-loop") {
      const submit = (sentUs) => b.send(QUEUE, { sent_us: sentUs, sleep_ms: 0 });
      emit(await openLoop(submit, o.rate, o.secs, o.inFlight));
    } else if (command === "roundtrip") {
      const samples = await roundTrips(
        async () => {
          const id = await b.send(QUEUE, { sent_us: 0, sleep_ms: 0 });
          await pollUntil(async () => (await b.getJobById(QUEUE, id))?.state === "completed", 1, 30_000);
        },
        o.n,
        o.budgetSecs,
      );
      emit({ samples_us: samples });
    } else {
      throw new Error(`unknown command ${command}`);
    }
  } finally {
    await b.stop({ graceful: false, wait: true });
  }
});
