-- Version 1: everything a store keeps, and what replicas share.
--
-- Task ids, times (milliseconds since the Unix epoch) and counts are
-- bigint; u64 values above 2^63 - 1 are refused, except worker ids, which
-- are random 64-bit numbers stored as their two's-complement bit pattern.
CREATE TABLE tasks (
    id                 bigint           PRIMARY KEY,
    type               text             NOT NULL,
    queue              text             NOT NULL,
    payload            text             NOT NULL,
    priority           smallint         NOT NULL,
    state              text             NOT NULL,
    attempts           bigint           NOT NULL,
    max_attempts       bigint           NOT NULL,
    timeout_ms         bigint,
    backoff_initial_ms bigint           NOT NULL,
    backoff_max_ms     bigint           NOT NULL,
    backoff_multiplier double precision NOT NULL,
    run_at             bigint,
    idempotency_key    text,
    routing_key        text,
    strategy           text             NOT NULL,
    labels             jsonb            NOT NULL,
    depends_on         bigint[]         NOT NULL,
    result             text,
    error              text,
    worker_id          bigint,
    created_at         bigint           NOT NULL,
    started_at         bigint,
    finished_at        bigint,
    pinned_worker      bigint,
    is_join            boolean          NOT NULL,
    shard_index        bigint,
    shard_total        bigint,
    request_digest     bytea
);

-- An insert is ON CONFLICT (idempotency_key) DO NOTHING against this index.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- list_tasks by state, type or queue, newest first below a cursor, reads one
-- index range backwards; load_live reads the live states' ranges.
CREATE INDEX tasks_state_id ON tasks (state, id);
CREATE INDEX tasks_type_id ON tasks (type, id);
CREATE INDEX tasks_queue_id ON tasks (queue, id);

CREATE TABLE schedules (
    name           text    PRIMARY KEY,
    cron           text    NOT NULL,
    timezone       text    NOT NULL,
    task           text    NOT NULL,
    misfire        text    NOT NULL,
    catch_up_limit bigint  NOT NULL,
    paused         boolean NOT NULL,
    created_at     bigint  NOT NULL,
    last_fire_at   bigint
);

-- The fire ledger: one row per fire, whoever wrote it first wins.
CREATE TABLE schedule_fires (
    schedule text   NOT NULL,
    fire_at  bigint NOT NULL,
    task_id  bigint NOT NULL,
    PRIMARY KEY (schedule, fire_at)
);

CREATE TABLE queue_settings (
    name   text    PRIMARY KEY,
    paused boolean NOT NULL
);

CREATE TABLE workers (
    id            bigint  PRIMARY KEY,
    name          text    NOT NULL,
    types         jsonb   NOT NULL,
    labels        jsonb   NOT NULL,
    capacity      bigint  NOT NULL,
    weight        bigint  NOT NULL,
    owner         bytea,
    registered_at bigint  NOT NULL
);

-- One row per partition; times on the database's clock. A released lease
-- has expires_at at the Unix epoch.
CREATE TABLE leases (
    partition  text        PRIMARY KEY,
    holder     text        NOT NULL,
    holder_url text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE replicas (
    id           text        PRIMARY KEY,
    url          text        NOT NULL,
    last_seen_at timestamptz NOT NULL
);

-- The next task id reserve_ids hands out: one row.
CREATE TABLE id_counter (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_id bigint  NOT NULL
);
