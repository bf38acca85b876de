// BullMQ on Redis, for the peer benchmark (see common.mjs for the commands).
//
//   node bullmq-peer.mjs <command> --redis redis://127.0.0.1:PORT/0 [...]
//
// One queue, `bench`. A worker process is one `Worker` with `concurrency`
// SLOTS. Drain and latency jobs are removed once complete
// (`removeOnComplete`), as the other peers delete theirs; round-trip jobs
// are kept until the client has read their result, which it waits for with
// `job.waitUntilFinished(queueEvents)`, BullMQ's own way.

import { Queue, QueueEvents, Worker } from "bullmq";

import { cli, emit, openLoop, Recorder, roundTrips, runTask, stopOn } from "./common.mjs";

const QUEUE = "bench";
const CHUNK = 1000;

function connection(url) {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    db: Number((u.pathname || "/0").slice(1) || 0),
    // BullMQ's workers need this; the queues accept it.
    maxRetriesPerRequest: null,
  };
}

cli(async (command, o) => {
  const conn = connection(o.redis);
  if (command === "work") {
    const recorder = new Recorder();
    const worker = new Worker(
      QUEUE,
      async (job) => {
        await runTask(recorder, job.data);
        return job.name === "echo" ? 1 : undefined;
      },
      { connection: conn, concurrency: o.slots },
    );
    worker.on("error", (e) => console.error(`worker error: ${e}`));
    stopOn(recorder, () => worker.close(true));
    await worker.waitUntilReady();
    return;
  }
  const queue = new Queue(QUEUE, { connection: conn });
  try {
    if (command === "setup") {
      await queue.waitUntilReady();
    } else if (command === "enqueue") {
      const data = { sent_us: 0, sleep_ms: o.sleepMs || 0 };
      for (let left = o.n; left > 0; left -= CHUNK) {
        const k = Math.min(CHUNK, left);
        const jobs = Array.from({ length: k }, () => ({
          name: "noop",
          data,
          opts: { removeOnComplete: true, removeOnFail: true },
        }));
        await queue.addBulk(jobs);
      }
    } else if (command === "open-loop") {
      const submit = (sentUs) =>
        queue.add("noop", { sent_us: sentUs, sleep_ms: 0 }, { removeOnComplete: true, removeOnFail: true });
      emit(await openLoop(submit, o.rate, o.secs, o.inFlight));
    } else if (command === "roundtrip") {
      const events = new QueueEvents(QUEUE, { connection: conn });
      await events.waitUntilReady();
      try {
        const samples = await roundTrips(
          async () => {
            const job = await queue.add("echo", { sent_us: 0, sleep_ms: 0 }, { removeOnComplete: 100 });
            await job.waitUntilFinished(events, 30_000);
          },
          o.n,
          o.budgetSecs,
        );
        emit({ samples_us: samples });
      } finally {
        await events.close();
      }
    } else {
      throw new Error(`unknown command ${command}`);
    }
  } finally {
    await queue.close();
  }
});
