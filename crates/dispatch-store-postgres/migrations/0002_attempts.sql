-- Version 2: attempt history. One row per ended attempt that counted,
-- keyed by (task, number), written by the statement of the update that
-- ends it; deleted with its task (purge). worker_id is the worker id's
-- bit pattern, like tasks.worker_id.
CREATE TABLE attempts (
    task_id        bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt        bigint NOT NULL,
    worker_id      bigint NOT NULL,
    worker_name    text   NOT NULL,
    collected_at   bigint NOT NULL,
    finished_at    bigint NOT NULL,
    outcome        text   NOT NULL,
    error          text,
    retry_delay_ms bigint,
    PRIMARY KEY (task_id, attempt)
);
