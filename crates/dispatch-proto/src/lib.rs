//! The wire contract of Dispatch and the only place that serializes.
//!
//! - [`decode`]: turns request bytes into a typed request, refusing bodies
//!   nested deeper than [`MAX_JSON_DEPTH`] and naming the field at fault.
//! - [`task`]: the Task JSON ([`TaskJson`]), submissions ([`SubmitTask`])
//!   and their validation into the core's [`dispatch_core::TaskSpec`] and
//!   the rest of a [`ValidTask`]. Store records are the server's: it
//!   converts between them and these types, so this crate (and every
//!   client of it) does not depend on the store.
//! - [`worker`]: the HTTP worker protocol: registration, poll, results.
//! - [`queue`]: queues as `GET /v1/queues` shows them ([`QueueJson`]).
//! - [`schedule`]: cron schedules ([`CreateSchedule`], [`ScheduleJson`]) and
//!   the task each fire makes from a schedule's template.
//! - [`attempt`]: a task's attempt history ([`AttemptList`]).
//! - [`health`]: the server's health and its replicas ([`HealthJson`],
//!   [`ClusterJson`]).
//! - [`problem`]: `application/problem+json` bodies and [`FieldError`].
//! - [`time`]: RFC 3339 timestamps to and from [`dispatch_core::Millis`].
//!
//! Validation lives here, next to the types, so that every transport and the
//! CLI reject the same input with the same message.

pub mod attempt;
pub mod health;
pub mod problem;
pub mod queue;
pub mod schedule;
pub mod task;
pub mod time;
pub mod worker;

mod decode;

pub use attempt::{AttemptJson, AttemptList};
pub use decode::{MAX_JSON_DEPTH, decode, json_depth};
pub use health::{ClusterJson, HealthJson, ReplicaJson, StoreFailureJson};
pub use problem::{FieldError, Problem};
pub use queue::{Change, QueueCounts, QueueJson, QueueList, QueueSettingsPatch, parse_queue_name};
pub use schedule::{
    CreateSchedule, PatchSchedule, ScheduleJson, ScheduleList, ScheduleParts, ValidSchedule,
    fire_key, fire_task, parse_schedule_name,
};
pub use task::{
    BackoffJson, BulkCount, BulkFilter, ListTasks, RequestDigest, SubmitBatch, SubmitTask,
    TaskBatch, TaskJson, TaskList, TaskRef, TaskRefBatch, ValidBulkFilter, ValidListTasks,
    ValidTask, parse_task_id, stored_json, validate_name,
};
pub use worker::{
    CompleteTask, FailTask, HeartbeatReply, HeartbeatRequest, LastHandout, MAX_RUNNING_IDS,
    Outcome, PollReply, PollRequest, PolledTask, RegisterReply, RegisterWorker, ReportResult,
    ResultStatus, WorkerJson, WorkerList, handout_number, handout_token, parse_worker_id,
    running_ids,
};
