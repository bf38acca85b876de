//! Fuzzing the protobuf side of the worker protocol: arbitrary bytes and
//! mutated valid encodings decoded as every message of `worker.proto`,
//! and arbitrary messages through the conversions into the JSON
//! contract's types. prost must refuse what is not a message without a
//! panic; a conversion refuses with a field error, never a panic; a valid
//! message survives encoding and decoding unchanged.
//!
//! Case counts are fixed and proptest's runner is deterministic, so a run
//! takes a few seconds and replays.

use dispatch_grpc::pb;
use dispatch_grpc::polled_task;
use dispatch_proto::{FieldError, RegisterWorker, ResultStatus};
use proptest::prelude::*;
use prost::Message;

/// `cases` cases, or `PROPTEST_CASES` when set, for a longer run.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig::with_cases(cases)
}

/// Decodes `bytes` as `M` (plain and length-delimited); when it decodes,
/// the message encodes again and that encoding decodes to the same
/// message.
fn decodes_as<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let _ = M::decode_length_delimited(bytes);
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again, m, "re-encoding changed the message");
    Some(m)
}

fn check_field_error(e: &FieldError, what: &str) {
    assert!(!e.field.is_empty(), "{what}: error without a field: {e:?}");
    assert!(!e.message.trim().is_empty(), "{what}: empty message: {e:?}");
}

/// Every conversion a decoded message goes through on the server or in
/// the SDK.
fn convert_worker_message(m: pb::WorkerMessage) {
    use pb::worker_message::Kind;
    match m.kind {
        Some(Kind::Register(r)) => convert_register(r),
        Some(Kind::Reports(r)) => r.reports.into_iter().for_each(convert_report),
        Some(Kind::Credit(_)) | Some(Kind::Heartbeat(_)) | None => {}
    }
}

fn convert_register(r: pb::Register) {
    let json = RegisterWorker::from(r.clone());
    // Back to protobuf: what the SDK sends for a registration.
    let back = pb::Register::from(&json);
    assert_eq!(back.types, r.types);
    assert_eq!(back.labels, r.labels);
    match json.validate() {
        Ok(spec) => {
            assert!(spec.capacity >= 1 && spec.capacity == r.capacity);
            assert!(!spec.types.is_empty());
        }
        Err(e) => check_field_error(&e, "register"),
    }
}

fn convert_report(r: pb::Report) {
    if let Err(e) = r.validate() {
        check_field_error(&e, "report");
    }
}

fn convert_scheduler_message(m: pb::SchedulerMessage) {
    use pb::scheduler_message::Kind;
    match m.kind {
        Some(Kind::Tasks(t)) => {
            for task in t.tasks {
                if let Err(e) = polled_task(task) {
                    check_field_error(&e, "task");
                }
            }
        }
        Some(Kind::ReportAcks(a)) => {
            for ack in a.acks {
                let status = ResultStatus::from(ack.clone());
                assert_eq!(
                    u32::from(status.status),
                    ack.status.min(u32::from(u16::MAX))
                );
            }
        }
        Some(Kind::Registered(_)) | Some(Kind::Stop(_)) | None => {}
    }
}

/// Decodes `bytes` as every message of the protocol.
fn every_message(bytes: &[u8]) {
    if let Some(m) = decodes_as::<pb::WorkerMessage>(bytes) {
        convert_worker_message(m);
    }
    if let Some(m) = decodes_as::<pb::SchedulerMessage>(bytes) {
        convert_scheduler_message(m);
    }
    if let Some(r) = decodes_as::<pb::Register>(bytes) {
        convert_register(r);
    }
    if let Some(r) = decodes_as::<pb::Reports>(bytes) {
        r.reports.into_iter().for_each(convert_report);
    }
    if let Some(r) = decodes_as::<pb::Report>(bytes) {
        convert_report(r);
    }
    if let Some(t) = decodes_as::<pb::Task>(bytes) {
        let _ = polled_task(t);
    }
    decodes_as::<pb::Credit>(bytes);
    decodes_as::<pb::Failure>(bytes);
    decodes_as::<pb::Heartbeat>(bytes);
    decodes_as::<pb::Registered>(bytes);
    decodes_as::<pb::Tasks>(bytes);
    decodes_as::<pb::Stop>(bytes);
    decodes_as::<pb::ReportAcks>(bytes);
    decodes_as::<pb::ReportAck>(bytes);
}

// ---- messages ------------------------------------------------------------------------

/// Text a field may hold: names, JSON, hostile characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._:-]{0,12}",
        ".{0,16}",
        Just(String::new()),
        Just("\u{0}".to_owned()),
        Just("x".repeat(300)),
        Just("[".repeat(70) + &"]".repeat(70)),
        Just(r#"{"ok": true}"#.to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("w00000000000000ff".to_owned()),
    ]
}

fn register() -> impl Strategy<Value = pb::Register> {
    (
        prop::option::of(text()),
        prop::collection::vec(text(), 0..4),
        prop::collection::btree_map(text(), text(), 0..3),
        prop_oneof![0u32..20, any::<u32>()],
        prop::option::of(prop_oneof![0u32..2000, any::<u32>()]),
    )
        .prop_map(|(name, types, labels, capacity, weight)| pb::Register {
            name,
            types,
            labels,
            capacity,
            weight,
        })
}

fn report() -> impl Strategy<Value = pb::Report> {
    (
        text(),
        prop_oneof![
            Just(None),
            text().prop_map(|j| Some(pb::report::Outcome::ResultJson(j))),
            (text(), prop::option::of(any::<u64>()), any::<bool>()).prop_map(|(e, r, a)| Some(
                pb::report::Outcome::Failure(pb::Failure {
                    error: e,
                    retry_after_ms: r,
                    abort: a,
                })
            )),
        ],
    )
        .prop_map(|(task_id, outcome)| pb::Report { task_id, outcome })
}

fn worker_message() -> impl Strategy<Value = pb::WorkerMessage> {
    prop_oneof![
        register().prop_map(pb::WorkerMessage::register),
        any::<u32>().prop_map(pb::WorkerMessage::credit),
        prop::collection::vec(report(), 0..4).prop_map(pb::WorkerMessage::reports),
        Just(pb::WorkerMessage::heartbeat()),
        Just(pb::WorkerMessage { kind: None }),
    ]
}

fn task() -> impl Strategy<Value = pb::Task> {
    (
        (text(), text(), text(), text()),
        (
            any::<u32>(),
            any::<u32>(),
            prop::option::of(any::<u64>()),
            any::<i32>(),
        ),
        (
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |((id, kind, queue, payload), (attempt, max, timeout, priority), (si, st))| pb::Task {
                id,
                r#type: kind,
                queue,
                payload_json: payload,
                attempt,
                max_attempts: max,
                timeout_ms: timeout,
                priority,
                shard_index: si,
                shard_total: st,
            },
        )
}

fn scheduler_message() -> impl Strategy<Value = pb::SchedulerMessage> {
    prop_oneof![
        (text(), any::<u64>(), any::<u64>())
            .prop_map(|(w, l, h)| pb::SchedulerMessage::registered(w, l, h)),
        prop::collection::vec(task(), 0..3).prop_map(pb::SchedulerMessage::tasks),
        prop::collection::vec(text(), 0..3).prop_map(pb::SchedulerMessage::stop),
        prop::collection::vec(
            (text(), any::<u32>(), text()).prop_map(|(task_id, status, detail)| pb::ReportAck {
                task_id,
                status,
                detail
            }),
            0..3
        )
        .prop_map(pb::SchedulerMessage::report_acks),
    ]
}

/// A valid encoding of any message of the protocol.
fn encoding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        worker_message().prop_map(|m| m.encode_to_vec()),
        scheduler_message().prop_map(|m| m.encode_to_vec()),
    ]
}

/// A change to an encoding's bytes.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
    /// A field with an unknown number, or a known number with another wire
    /// type, appended.
    Append(Vec<u8>),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..6)
        )
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(ByteEdit::Remove),
        any::<prop::sample::Index>().prop_map(ByteEdit::Truncate),
        prop_oneof![
            // Field 15, varint: unknown, skipped.
            Just(vec![0x78, 0x01]),
            // Field 1 as a varint where a message is expected.
            Just(vec![0x08, 0x01]),
            // Field 1, length 2^32 - 1.
            Just(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            // A varint of eleven bytes.
            Just(vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            // Wire types 6 and 7 do not exist; 3 and 4 are groups.
            Just(vec![0x0e]),
            Just(vec![0x0f]),
            Just(vec![0x0b, 0x0c]),
            Just(vec![0x0b]),
            // Field number 0.
            Just(vec![0x00, 0x01]),
            // A string that is not UTF-8 in field 1.
            Just(vec![0x0a, 0x02, 0xff, 0xfe]),
        ]
        .prop_map(ByteEdit::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, e: &ByteEdit) -> Vec<u8> {
    match e {
        ByteEdit::Flip(i, b) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= b | 1;
        }
        ByteEdit::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        ByteEdit::Remove(i) if !bytes.is_empty() => {
            bytes.remove(i.index(bytes.len()));
        }
        ByteEdit::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
        ByteEdit::Append(b) => bytes.extend_from_slice(b),
        _ => {}
    }
    bytes
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        every_message(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        bytes in encoding(),
        edits in prop::collection::vec(byte_edit(), 1..4),
    ) {
        let bytes = edits.iter().fold(bytes, apply);
        every_message(&bytes);
    }

    #[test]
    fn worker_messages_round_trip_and_convert(m in worker_message()) {
        let bytes = m.encode_to_vec();
        prop_assert_eq!(pb::WorkerMessage::decode(bytes.as_slice()).expect("decodes"), m.clone());
        convert_worker_message(m);
    }

    #[test]
    fn scheduler_messages_round_trip_and_convert(m in scheduler_message()) {
        let bytes = m.encode_to_vec();
        prop_assert_eq!(pb::SchedulerMessage::decode(bytes.as_slice()).expect("decodes"), m.clone());
        convert_scheduler_message(m);
    }

    /// A registration converts to the JSON form and is validated by its
    /// rules: the same answer as `POST /v1/workers` with those members.
    #[test]
    fn registrations_validate_like_the_http_ones(r in register()) {
        let from_pb = RegisterWorker::from(r.clone()).validate();
        let json = serde_json::json!({
            "name": r.name,
            "types": r.types,
            "labels": r.labels,
            "capacity": r.capacity,
            "weight": r.weight,
        });
        let from_json = dispatch_proto::decode::<RegisterWorker>(json.to_string().as_bytes())
            .expect("the JSON form decodes")
            .validate();
        match (from_pb, from_json) {
            (Ok(a), Ok(b)) => prop_assert_eq!(
                (a.capacity, a.weight, a.types, a.labels),
                (b.capacity, b.weight, b.types, b.labels)
            ),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "gRPC {:?} but HTTP {:?}", a, b),
        }
    }
}

/// Hostile bytes as the server's first read: prost refuses each with an
/// error, except two that decode to a message with nothing in it (which the
/// server then refuses as a first message, or applies as no reports).
#[test]
fn hostile_encodings_are_refused_or_decode_to_nothing() {
    use pb::worker_message::Kind;
    let empty_reports = pb::WorkerMessage {
        kind: Some(Kind::Reports(pb::Reports::default())),
    };
    // Each case, and what it decodes to as a WorkerMessage (None: refused).
    let cases: Vec<(Vec<u8>, Option<pb::WorkerMessage>)> = vec![
        (vec![], Some(pb::WorkerMessage::default())),
        (vec![0x00], None),
        (vec![0xff; 64], None),
        // A Register nested in a WorkerMessage whose length runs past the end.
        (vec![0x0a, 0x7f, 0x12, 0x01, b'x'], None),
        // Reports with a million-report length prefix and nothing after it.
        (vec![0x1a, 0x80, 0x89, 0x7a], None),
        // Deep nesting of groups.
        ([vec![0x0b; 200], vec![0x0c; 200]].concat(), None),
        // Field 3 (Reports), empty, 120 times over: one empty Reports.
        (
            (0..120).flat_map(|_| [0x1a, 0x00]).collect(),
            Some(empty_reports),
        ),
    ];
    for (bytes, expected) in &cases {
        every_message(bytes);
        let got = pb::WorkerMessage::decode(bytes.as_slice());
        match expected {
            None => assert!(got.is_err(), "{bytes:x?} decoded to {got:?}"),
            Some(m) => assert_eq!(got.as_ref().ok(), Some(m), "{bytes:x?}"),
        }
    }
}
