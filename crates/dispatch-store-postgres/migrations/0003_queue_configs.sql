-- Version 3: queue settings set through the API, by name; they win over
-- the config file's (a new leader loads them). strategy is a strategy's
-- name.
CREATE TABLE queue_configs (
    name         text             PRIMARY KEY,
    weight       bigint           NOT NULL,
    max_running  bigint,
    rate_per_sec double precision,
    burst        bigint,
    max_per_key  bigint,
    max_depth    bigint,
    strategy     text
);
