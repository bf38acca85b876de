// graphile-worker on PostgreSQL, for the peer benchmark (see common.mjs for
// the commands).
//
//   node graphile-peer.mjs <command> --db postgres://USER@127.0.0.1:PORT/DB [...]
//
// A worker process is one `run()` with SLOTS concurrent jobs and the
// batching settings of graphile-worker's own performance page: a local
// queue of 500 jobs fetched (and locked) at once, job completions batched
// (`completeJobBatchDelay: 0`, `failJobBatchDelay: 0`), a pool of SLOTS + 1
// connections. New jobs wake the workers through LISTEN/NOTIFY (its
// `jobs:insert` trigger), so latency does not wait for a poll.
//
// graphile-worker has no call that waits for a job's result: a round trip
// adds a job, then polls its row (`graphile_worker.jobs`) every 1 ms (the
// timer's resolution) until it is gone, which is how graphile-worker marks
// a job complete.

import pg from "pg";
import { Logger, makeWorkerUtils, run } from "graphile-worker";

import { cli, emit, openLoop, pollUntil, Recorder, roundTrips, runTask, stopOn } from "./common.mjs";

const CHUNK = 1000;
// Warnings and errors only (its default logs a line per job), as the other
// peers' workers log.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    console.error(`${level}: ${message}`);
  }
});

cli(async (command, o) => {
  if (command === "work") {
    const recorder = new Recorder();
    const task = async (payload) => {
      await runTask(recorder, payload);
    };
    const runner = await run({
      noHandleSignals: true,
      taskList: { noop: task, echo: task },
      preset: {
        worker: {
          connectionString: o.db,
          logger,
          concurrentJobs: o.slots,
          maxPoolSize: o.slots + 1,
          localQueue: { size: 500 },
          completeJobBatchDelay: 0,
          failJobBatchDelay: 0,
        },
      },
    });
    stopOn(recorder, () => runner.stop());
    await runner.promise;
    return;
  }
  const pool = new pg.Pool({ connectionString: o.db, max: Math.max(2, o.inFlight || 2) });
  const utils = await makeWorkerUtils({ pgPool: pool, logger });
  try {
    if (command === "setup") {
      await utils.migrate();
    } else if (command === "enqueue") {
      const payload = { sent_us: 0, sleep_ms: o.sleepMs || 0 };
      for (let left = o.n; left > 0; left -= CHUNK) {
        const k = Math.min(CHUNK, left);
        await utils.addJobs(Array.from({ length: k }, () => ({ identifier: "noop", payload })));
      }
    } else if (command === "open-loop") {
      const submit = (sentUs) => utils.addJob("noop", { sent_us: sentUs, sleep_ms: 0 });
      emit(await openLoop(submit, o.rate, o.secs, o.inFlight));
    } else if (command === "roundtrip") {
      const samples = await roundTrips(
        async () => {
          const job = await utils.addJob("echo", { sent_us: 0, sleep_ms: 0 });
          await pollUntil(
            async () => (await pool.query("select 1 from graphile_worker.jobs where id = $1", [job.id])).rowCount === 0,
            1,
            30_000,
          );
        },
        o.n,
        o.budgetSecs,
      );
      emit({ samples_us: samples });
    } else {
      throw new Error(`unknown command ${command}`);
    }
  } finally {
    await utils.release();
    await pool.end();
  }
});
