//! The streaming worker protocol of Dispatch: gRPC, one bidirectional
//! stream per worker session, with credit-based flow control.
//!
//! The service is defined in `proto/dispatch/v1/worker.proto` and compiled
//! at build time with protox and tonic-prost-build (no `protoc` binary). This
//! crate holds the generated code ([`pb`]), the service's server and client
//! stubs ([`WorkerServiceServer`], [`WorkerServiceClient`]), the compiled
//! descriptors ([`FILE_DESCRIPTOR_SET`], for server reflection) and the
//! conversions between the protobuf messages and the JSON contract's types
//! in `dispatch-proto`, so that both transports validate with the same rules:
//!
//! - [`pb::Register`] becomes a [`RegisterWorker`], validated by
//!   [`RegisterWorker::validate`] like `POST /v1/workers`;
//! - [`pb::Report`] becomes a [`ReportResult`], validated into a task and an
//!   [`Outcome`] like the batched results of the HTTP poll;
//! - [`polled_task`] turns a [`pb::Task`] (the server makes it from a
//!   running task of the core) into the SDK's [`PolledTask`].
//!
//! Payloads and results travel as JSON text, as the contract says.
//!
//! The flow of one session, worker on the left:
//!
//! ```text
//! Register{types, capacity}  ─▶
//!                            ◀─  Registered{worker_id, lease_ms, heartbeat_ms}
//! Credit{capacity}           ─▶
//!                            ◀─  Tasks[t1, t2]        (never more than the credit)
//!                            ◀─  Stop[t2]             (cancelled: at once)
//! Reports[t1 ok], Credit{2}  ─▶
//!                            ◀─  ReportAcks[t1 200]   (once durable)
//! Heartbeat                  ─▶                       (when idle)
//! half-close                 ─▶  leave: held tasks requeued, attempts not counted
//! (stream breaks)                lost: held tasks requeued at once, attempts count
//! ```

use dispatch_core::TaskId;
use dispatch_proto::{
    FieldError, MAX_JSON_DEPTH, Outcome, PolledTask, RegisterWorker, ReportResult, ResultStatus,
    json_depth,
};
use serde_json::value::RawValue;

/// The generated messages and service stubs of `dispatch.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dispatch.v1");
}

/// The compiled `worker.proto` (an encoded `FileDescriptorSet`, comments
/// included), for the server's reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dispatch_descriptor");

pub use pb::worker_service_client::WorkerServiceClient;
pub use pb::worker_service_server::{SERVICE_NAME, WorkerService, WorkerServiceServer};

use pb::scheduler_message::Kind as SchedulerKind;
use pb::worker_message::Kind as WorkerKind;

impl From<pb::Register> for RegisterWorker {
    fn from(r: pb::Register) -> Self {
        RegisterWorker {
            name: r.name,
            types: Some(r.types),
            labels: Some(r.labels),
            capacity: Some(i64::from(r.capacity)),
            weight: r.weight.map(i64::from),
        }
    }
}

impl From<&RegisterWorker> for pb::Register {
    fn from(r: &RegisterWorker) -> Self {
        let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        pb::Register {
            name: r.name.clone(),
            types: r.types.clone().unwrap_or_default(),
            labels: r.labels.clone().unwrap_or_default(),
            capacity: r.capacity.map_or(1, clamp),
            weight: r.weight.map(clamp),
        }
    }
}

impl pb::Report {
    /// A success with its result (JSON text).
    pub fn succeeded(task_id: impl Into<String>, result: &RawValue) -> Self {
        pb::Report {
            task_id: task_id.into(),
            outcome: Some(pb::report::Outcome::ResultJson(result.get().to_owned())),
        }
    }

    /// A failed attempt.
    pub fn failed(
        task_id: impl Into<String>,
        error: impl Into<String>,
        retry_after_ms: Option<u64>,
        abort: bool,
    ) -> Self {
        pb::Report {
            task_id: task_id.into(),
            outcome: Some(pb::report::Outcome::Failure(pb::Failure {
                error: error.into(),
                retry_after_ms,
                abort,
            })),
        }
    }

    /// Validates a report into its task and outcome, with the rules of the
    /// HTTP protocol's batched results.
    pub fn validate(self) -> Result<(TaskId, Outcome), FieldError> {
        let mut r = ReportResult {
            task_id: self.task_id,
            ..ReportResult::default()
        };
        match self.outcome {
            None => {}
            Some(pb::report::Outcome::ResultJson(json)) => {
                if json_depth(json.as_bytes()) > MAX_JSON_DEPTH {
                    return Err(FieldError::new(
                        "result_json",
                        format!("JSON nesting is deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
                let raw = RawValue::from_string(json)
                    .map_err(|e| FieldError::new("result_json", format!("is not JSON: {e}")))?;
                r.result = Some(raw);
            }
            Some(pb::report::Outcome::Failure(f)) => {
                r.error = Some(serde_json::Value::String(f.error));
                r.retry_after_ms = f
                    .retry_after_ms
                    .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
                r.abort = Some(f.abort);
            }
        }
        r.validate()
    }
}

/// The task a worker received, in the form its handlers take. Fails when
/// the payload is not JSON.
pub fn polled_task(t: pb::Task) -> Result<PolledTask, FieldError> {
    let payload = RawValue::from_string(t.payload_json)
        .map_err(|e| FieldError::new("payload_json", format!("is not JSON: {e}")))?;
    Ok(PolledTask {
        id: t.id,
        kind: t.r#type,
        queue: t.queue,
        payload,
        attempt: t.attempt,
        max_attempts: t.max_attempts,
        timeout_ms: t.timeout_ms,
        priority: i64::from(t.priority),
        shard_index: t.shard_index,
        shard_total: t.shard_total,
    })
}

impl From<ResultStatus> for pb::ReportAck {
    fn from(s: ResultStatus) -> Self {
        pb::ReportAck {
            task_id: s.task_id,
            status: u32::from(s.status),
            detail: s.detail.unwrap_or_default(),
        }
    }
}

impl From<pb::ReportAck> for ResultStatus {
    fn from(a: pb::ReportAck) -> Self {
        ResultStatus {
            task_id: a.task_id,
            status: u16::try_from(a.status).unwrap_or(u16::MAX),
            state: None,
            detail: (!a.detail.is_empty()).then_some(a.detail),
        }
    }
}

impl pb::WorkerMessage {
    /// The opening message.
    pub fn register(r: pb::Register) -> Self {
        Self::of(WorkerKind::Register(r))
    }

    /// Grants `slots` more tasks.
    pub fn credit(slots: u32) -> Self {
        Self::of(WorkerKind::Credit(pb::Credit { slots }))
    }

    /// Finished tasks.
    pub fn reports(reports: Vec<pb::Report>) -> Self {
        Self::of(WorkerKind::Reports(pb::Reports { reports }))
    }

    /// Proof of life.
    pub fn heartbeat() -> Self {
        Self::of(WorkerKind::Heartbeat(pb::Heartbeat {}))
    }

    fn of(kind: WorkerKind) -> Self {
        pb::WorkerMessage { kind: Some(kind) }
    }
}

impl pb::SchedulerMessage {
    /// The answer to a registration.
    pub fn registered(worker_id: String, lease_ms: u64, heartbeat_ms: u64) -> Self {
        Self::of(SchedulerKind::Registered(pb::Registered {
            worker_id,
            lease_ms,
            heartbeat_ms,
        }))
    }

    /// Tasks to run.
    pub fn tasks(tasks: Vec<pb::Task>) -> Self {
        Self::of(SchedulerKind::Tasks(pb::Tasks { tasks }))
    }

    /// Tasks to stop.
    pub fn stop(task_ids: Vec<String>) -> Self {
        Self::of(SchedulerKind::Stop(pb::Stop { task_ids }))
    }

    /// The fate of reported results.
    pub fn report_acks(acks: Vec<pb::ReportAck>) -> Self {
        Self::of(SchedulerKind::ReportAcks(pb::ReportAcks { acks }))
    }

    fn of(kind: SchedulerKind) -> Self {
        pb::SchedulerMessage { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_validated_like_the_http_one() {
        let ok = pb::Register {
            name: Some("w1".into()),
            types: vec!["email.send".into()],
            labels: [("zone".to_owned(), "eu".to_owned())].into(),
            capacity: 4,
            weight: None,
        };
        let spec = RegisterWorker::from(ok.clone()).validate().unwrap();
        assert_eq!((spec.capacity, spec.weight), (4, 1));
        assert_eq!(spec.labels["zone"], "eu");
        assert_eq!(pb::Register::from(&RegisterWorker::from(ok.clone())), ok);

        let no_types = pb::Register {
            types: vec![],
            ..ok.clone()
        };
        let e = RegisterWorker::from(no_types).validate().unwrap_err();
        assert_eq!(e.field, "types");
        let zero = pb::Register { capacity: 0, ..ok };
        assert_eq!(
            RegisterWorker::from(zero).validate().unwrap_err().field,
            "capacity"
        );
    }

    #[test]
    fn reports_validate_into_outcomes() {
        let raw = RawValue::from_string(r#"{"sum":4}"#.into()).unwrap();
        let (id, out) = pb::Report::succeeded("7", &raw).validate().unwrap();
        assert_eq!(id, TaskId(7));
        assert_eq!(out, Outcome::Succeeded(r#"{"sum":4}"#.into()));

        let (_, out) = pb::Report::failed("7", "busy", Some(20), false)
            .validate()
            .unwrap();
        assert_eq!(
            out,
            Outcome::Failed {
                error: "busy".into(),
                retry_after_ms: Some(20),
                abort: false
            }
        );

        let bare = pb::Report {
            task_id: "7".into(),
            outcome: None,
        };
        assert_eq!(
            bare.validate().unwrap().1,
            Outcome::Succeeded("null".into())
        );

        let not_json = pb::Report {
            task_id: "7".into(),
            outcome: Some(pb::report::Outcome::ResultJson("{".into())),
        };
        assert_eq!(not_json.validate().unwrap_err().field, "result_json");
        let deep = pb::Report {
            task_id: "7".into(),
            outcome: Some(pb::report::Outcome::ResultJson(
                "[".repeat(65) + &"]".repeat(65),
            )),
        };
        assert_eq!(deep.validate().unwrap_err().field, "result_json");
        assert_eq!(
            pb::Report::failed("x", "e", None, true)
                .validate()
                .unwrap_err()
                .field,
            "task_id"
        );
        let too_late = pb::Report::failed("7", "e", Some(u64::MAX), false);
        assert_eq!(too_late.validate().unwrap_err().field, "retry_after_ms");
    }

    #[test]
    fn a_task_round_trips_to_the_sdk_form() {
        let t = pb::Task {
            id: "12".into(),
            r#type: "math.add".into(),
            queue: "default".into(),
            payload_json: r#"{"a":1}"#.into(),
            attempt: 2,
            max_attempts: 3,
            timeout_ms: Some(500),
            priority: -5,
            shard_index: Some(1),
            shard_total: Some(4),
        };
        let p = polled_task(t.clone()).unwrap();
        assert_eq!(
            (p.id.as_str(), p.kind.as_str(), p.payload.get()),
            ("12", "math.add", r#"{"a":1}"#)
        );
        assert_eq!((p.attempt, p.timeout_ms, p.priority), (2, Some(500), -5));
        let bad = pb::Task {
            payload_json: "nope".into(),
            ..t
        };
        assert_eq!(polled_task(bad).unwrap_err().field, "payload_json");
    }
}
