//! Fuzzing the request decoders: arbitrary bytes and structure-aware
//! mutations of valid bodies (wrong types, huge numbers, deep nesting,
//! unicode and NULs, unknown and duplicate keys, truncation, trailing data)
//! go through every public decode and validate entry point of
//! `dispatch-proto`. None may panic; every refusal is a 400 or 422 that
//! says what is wrong, naming the field when one is at fault; a valid body
//! survives a round trip through its JSON text.
//!
//! The case counts are fixed and proptest's runner is deterministic, so a
//! run takes a few seconds and replays.

use dispatch_core::Millis;
use dispatch_proto::schedule::DEFAULT_CATCH_UP_LIMIT;
use dispatch_proto::{
    CompleteTask, CreateSchedule, FailTask, FieldError, ListTasks, PollRequest, Problem,
    RegisterWorker, ReportResult, ScheduleParts, SubmitBatch, SubmitTask, ValidSchedule, decode,
    fire_task, json_depth, parse_queue_name, parse_schedule_name, parse_task_id, parse_worker_id,
    validate_name,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// `cases` cases, or `PROPTEST_CASES` when set, for a longer run.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig::with_cases(cases)
}

const NOW: Millis = 1_767_225_600_000;

// ---- checks ------------------------------------------------------------------

/// A decoding refusal: a 400 whose detail says what is wrong.
fn check_problem(p: &Problem, text: &[u8]) {
    assert_eq!(
        p.status,
        400,
        "{p:?} for {:?}",
        String::from_utf8_lossy(text)
    );
    assert!(!p.detail.trim().is_empty(), "empty detail for {text:?}");
    assert!(!p.title.is_empty() && p.kind.starts_with("urn:dispatch:problem:"));
    if let Some(f) = &p.field {
        assert!(!f.is_empty(), "an empty field is no field: {p:?}");
        assert!(
            p.detail.contains(f.as_str()),
            "detail names the field: {p:?}"
        );
    }
}

/// A validation refusal names its field and says what is wrong.
fn check_field_error(e: &FieldError, what: &str) {
    assert!(!e.field.is_empty(), "{what}: error without a field: {e:?}");
    assert!(!e.message.trim().is_empty(), "{what}: empty message: {e:?}");
    assert!(e.to_string().starts_with(&e.field), "{what}: {e}");
}

/// When the text is one JSON object of bounded depth, a type error must
/// name its field: the only refusals without one are about the whole body.
fn check_named_when_well_formed(p: &Problem, text: &[u8]) {
    let parsed: Result<Value, _> = serde_json::from_slice(text);
    if let Ok(Value::Object(_)) = parsed
        && json_depth(text) <= dispatch_proto::MAX_JSON_DEPTH
        // An unknown member named "" cannot be named.
        && !p.detail.contains("unknown field ``")
    {
        assert!(
            p.field.is_some(),
            "a well-formed object was refused without naming a field: {p:?} for {}",
            String::from_utf8_lossy(text)
        );
    }
}

/// Decodes `text` as `T`, then validates it with `validate`; checks the
/// shape of every refusal. Returns whether it was accepted.
fn run<T, V>(what: &str, text: &[u8], validate: impl FnOnce(T) -> Result<V, FieldError>) -> bool
where
    T: serde::de::DeserializeOwned,
{
    match decode::<T>(text) {
        Err(p) => {
            check_problem(&p, text);
            check_named_when_well_formed(&p, text);
            false
        }
        Ok(req) => match validate(req) {
            Ok(_) => true,
            Err(e) => {
                check_field_error(&e, what);
                false
            }
        },
    }
}

/// Every request body type of the contract, decoded and validated from
/// `text`; returns the names of those that accepted it.
fn every_decoder(text: &[u8]) -> Vec<&'static str> {
    let mut accepted = Vec::new();
    let mut take = |what: &'static str, ok: bool| {
        if ok {
            accepted.push(what);
        }
    };
    take("task", run("task", text, |t: SubmitTask| t.validate(NOW)));
    take(
        "batch",
        run("batch", text, |b: SubmitBatch| {
            for (i, t) in b.tasks.into_iter().enumerate() {
                t.validate(NOW)
                    .map_err(|e| e.within(&format!("tasks[{i}]")))?;
            }
            Ok(())
        }),
    );
    take(
        "register",
        run("register", text, |r: RegisterWorker| r.validate()),
    );
    take(
        "poll",
        run("poll", text, |p: PollRequest| {
            p.limits(4)?;
            for (i, r) in p.results.unwrap_or_default().into_iter().enumerate() {
                r.validate()
                    .map_err(|e| e.within(&format!("results[{i}]")))?;
            }
            Ok(())
        }),
    );
    take(
        "report",
        run("report", text, |r: ReportResult| r.validate()),
    );
    take(
        "complete",
        run("complete", text, |c: CompleteTask| c.validate()),
    );
    take("fail", run("fail", text, |f: FailTask| f.validate()));
    take(
        "schedule",
        run("schedule", text, |s: CreateSchedule| {
            let v = s.validate(NOW)?;
            // What is stored decodes again, and its fires make valid tasks.
            let parts = stored_parts(&v)?;
            if let Some(at) = parts.cron.next_after(NOW) {
                fire_task(&parts.template, &v.name, at, at)?;
            }
            Ok(())
        }),
    );
    accepted
}

/// A valid schedule's parts decoded again from the text a store keeps.
fn stored_parts(v: &ValidSchedule) -> Result<ScheduleParts, FieldError> {
    let cron = &v.parts.cron;
    ScheduleParts::decode(
        cron.expression(),
        cron.timezone(),
        v.parts.misfire.as_str(),
        &v.task_text,
    )
}

/// Runs every decoder on `text`; when it is not one JSON value, checks
/// that every decoder refused it.
fn refused_when_not_json(text: &[u8]) {
    let accepted = every_decoder(text);
    if serde_json::from_slice::<Value>(text).is_err() {
        assert!(
            accepted.is_empty(),
            "malformed JSON accepted by {accepted:?}: {}",
            String::from_utf8_lossy(text)
        );
    }
}

// ---- valid bodies ------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,24}"
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn payload() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn labels() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..3).prop_map(|m| json!(m))
}

/// A valid task submission; `template` leaves out what a schedule's
/// template may not give.
fn valid_task(template: bool) -> impl Strategy<Value = Value> {
    (
        name(),
        prop::option::of(name()),
        payload(),
        prop::option::of(-100i64..=100),
        prop::option::of(0i64..=86_400_000),
        prop::option::of(1i64..=3_600_000),
        prop::option::of(1i64..=1000),
        prop::option::of((0i64..=60_000, 1.0f64..=100.0)),
        prop::option::of("[a-z0-9]{1,16}"),
        prop::option::of(labels()),
        0usize..6,
    )
        .prop_map(
            move |(
                kind,
                queue,
                payload,
                prio,
                delay,
                timeout,
                attempts,
                backoff,
                key,
                labels,
                s,
            )| {
                let mut t = Map::new();
                t.insert("type".into(), kind.into());
                t.insert("payload".into(), payload);
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        t.insert(k.into(), v);
                    }
                };
                put("queue", queue.map(Value::from));
                put("priority", prio.map(Value::from));
                put("timeout_ms", timeout.map(Value::from));
                put("max_attempts", attempts.map(Value::from));
                put(
                    "backoff",
                    backoff.map(|(i, m)| json!({"initial_ms": i, "multiplier": m})),
                );
                put("labels", labels);
                put("routing_key", key.clone().map(Value::from));
                if !template {
                    put("delay_ms", delay.map(Value::from));
                    put(
                        "idempotency_key",
                        key.map(|k| Value::from(format!("id-{k}"))),
                    );
                }
                let strategies = ["round_robin", "random", "least_loaded", "failover"];
                if s < strategies.len() {
                    t.insert("strategy".into(), strategies[s].into());
                } else if !template {
                    t.insert("strategy".into(), "sharding".into());
                    t.insert("shards".into(), (s as i64).into());
                }
                Value::Object(t)
            },
        )
}

fn valid_register() -> impl Strategy<Value = Value> {
    (
        prop::option::of(".{1,20}"),
        prop::collection::vec(name(), 1..4),
        labels(),
        1i64..=10_000,
        prop::option::of(1i64..=1000),
    )
        .prop_map(|(n, types, labels, capacity, weight)| {
            let mut w = json!({"types": types, "labels": labels, "capacity": capacity});
            if let Some(n) = n {
                w["name"] = n.into();
            }
            if let Some(weight) = weight {
                w["weight"] = weight.into();
            }
            w
        })
}

fn valid_report() -> impl Strategy<Value = Value> {
    (
        1u64..u64::MAX,
        payload(),
        prop::option::of(0i64..=1000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, p, retry, fail, abort)| {
            if fail {
                let mut r = json!({"task_id": id.to_string(), "error": p, "abort": abort});
                if let Some(ms) = retry {
                    r["retry_after_ms"] = ms.into();
                }
                r
            } else {
                json!({"task_id": id.to_string(), "result": p})
            }
        })
}

fn valid_poll() -> impl Strategy<Value = Value> {
    (
        prop::option::of(1i64..=10_000),
        prop::option::of(0i64..=60_000),
        prop::option::of(prop::collection::vec(valid_report(), 0..3)),
    )
        .prop_map(|(max, wait, results)| {
            let mut p = json!({});
            if let Some(m) = max {
                p["max"] = m.into();
            }
            if let Some(w) = wait {
                p["wait_ms"] = w.into();
            }
            if let Some(r) = results {
                p["results"] = r.into();
            }
            p
        })
}

const CRONS: [&str; 8] = [
    "* * * * *",
    "*/15 * * * *",
    "30 2 * * *",
    "0 9,17 * * 1-5",
    "0 0 L * *",
    "15 30 1 * * SUN",
    "@daily",
    "0 0 29 2 *",
];
const ZONES: [&str; 6] = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
];

fn valid_schedule() -> impl Strategy<Value = Value> {
    (
        name(),
        0..CRONS.len(),
        prop::option::of(0..ZONES.len()),
        valid_task(true),
        prop::option::of(0usize..3),
        prop::option::of(1i64..=1000),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(n, c, z, task, misfire, limit, paused)| {
            let mut s = json!({"name": n, "cron": CRONS[c], "task": task});
            if let Some(z) = z {
                s["timezone"] = ZONES[z].into();
            }
            if let Some(m) = misfire {
                s["misfire"] = ["skip", "fire_once", "catch_up"][m].into();
            }
            if let Some(l) = limit {
                s["catch_up_limit"] = l.into();
            }
            if let Some(p) = paused {
                s["paused"] = p.into();
            }
            s
        })
}

/// Any valid request body of the contract.
fn valid_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        valid_task(false),
        prop::collection::vec(valid_task(false), 1..4).prop_map(|t| json!({"tasks": t})),
        valid_register(),
        valid_poll(),
        valid_report(),
        valid_schedule(),
        (any::<u64>(), payload())
            .prop_map(|(w, r)| json!({"worker_id": format!("w{w:016x}"), "result": r})),
        (any::<u64>(), payload())
            .prop_map(|(w, e)| json!({"worker_id": format!("w{w:016x}"), "error": e})),
    ]
}

// ---- mutations ---------------------------------------------------------------------

/// A value of the wrong kind, or an extreme one of the right kind.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(true)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!(-0.0)),
        Just(json!("")),
        Just(json!("\u{0}")),
        Just(json!("a\u{0}b")),
        Just(json!("é日本\u{1F600}")),
        Just(json!("\u{202E}rtl")),
        Just(json!("9".repeat(40))),
        Just(json!("x".repeat(300))),
        Just(json!([])),
        Just(json!({})),
        Just(json!([[[[[[[[1]]]]]]]])),
        Just(json!({"": {"": {"": null}}})),
        ".{0,20}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (1usize..80).prop_map(|n| {
            let mut v = json!(1);
            for _ in 0..n {
                v = json!([v]);
            }
            v
        }),
    ]
}

/// One change to a JSON value at a place chosen by `at`.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    Remove,
    AddKey(String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => hostile_value().prop_map(Edit::Replace),
        2 => Just(Edit::Remove),
        2 => (
            prop_oneof![
                Just("type".to_owned()),
                Just("prioirty".to_owned()),
                Just("".to_owned()),
                ".{1,10}".prop_map(String::from),
            ],
            hostile_value()
        )
            .prop_map(|(k, v)| Edit::AddKey(k, v)),
    ]
}

/// The number of places (values) in `v`.
fn places(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(places).sum(),
        Value::Object(o) => o.values().map(places).sum(),
        _ => 0,
    }
}

/// Applies `e` at the `at`-th place of `v` (pre-order); the root cannot be
/// removed. Returns true when `at` was reached.
fn apply(v: &mut Value, at: &mut usize, e: &Edit) -> bool {
    if *at == 0 {
        match e {
            Edit::Replace(n) => *v = n.clone(),
            Edit::AddKey(k, n) => {
                if let Value::Object(o) = v {
                    o.insert(k.clone(), n.clone());
                } else {
                    *v = json!({ k.clone(): n.clone() });
                }
            }
            Edit::Remove => {}
        }
        return true;
    }
    *at -= 1;
    match v {
        Value::Array(a) => {
            for i in 0..a.len() {
                if *at == 0 && matches!(e, Edit::Remove) {
                    a.remove(i);
                    return true;
                }
                if apply(&mut a[i], at, e) {
                    return true;
                }
            }
        }
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if *at == 0 && matches!(e, Edit::Remove) {
                    o.remove(&k);
                    return true;
                }
                if let Some(child) = o.get_mut(&k)
                    && apply(child, at, e)
                {
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

/// A change to the text itself, after the structural edits.
#[derive(Clone, Debug)]
enum TextEdit {
    None,
    Truncate(usize),
    Trailing(String),
    /// Repeats the first key of the object (`{"k": v, "k": v, ...`).
    DuplicateFirstKey,
    FlipByte(usize, u8),
    Insert(usize, Vec<u8>),
    Wrap(String, String),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        6 => Just(TextEdit::None),
        1 => any::<usize>().prop_map(TextEdit::Truncate),
        1 => prop_oneof![
            Just(" x".to_owned()),
            Just("{}".to_owned()),
            Just("]".to_owned()),
            Just("\u{0}".to_owned()),
            Just(" ".to_owned()),
        ]
        .prop_map(TextEdit::Trailing),
        1 => Just(TextEdit::DuplicateFirstKey),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| TextEdit::FlipByte(i, b)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| TextEdit::Insert(i, b)),
        1 => prop_oneof![
            Just(("[".to_owned(), "]".to_owned())),
            Just(("\u{feff}".to_owned(), String::new())),
            Just((" \n\t".to_owned(), "\r\n".to_owned())),
        ]
        .prop_map(|(a, b)| TextEdit::Wrap(a, b)),
    ]
}

fn apply_text(mut text: Vec<u8>, e: &TextEdit) -> Vec<u8> {
    match e {
        TextEdit::None => {}
        TextEdit::Truncate(n) => text.truncate(n % (text.len() + 1)),
        TextEdit::Trailing(s) => text.extend_from_slice(s.as_bytes()),
        TextEdit::DuplicateFirstKey => {
            // `{"k":v,...}` -> `{"k":v,"k":v,...}`: the first member again.
            let s = String::from_utf8_lossy(&text).into_owned();
            if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&s)
                && let Some((k, v)) = o.iter().next()
            {
                let member = format!("{}:{},", json!(k), v);
                text.splice(1..1, member.into_bytes());
            }
        }
        TextEdit::FlipByte(i, b) => {
            if !text.is_empty() {
                let i = i % text.len();
                text[i] = *b;
            }
        }
        TextEdit::Insert(i, b) => {
            let i = i % (text.len() + 1);
            text.splice(i..i, b.iter().copied());
        }
        TextEdit::Wrap(a, b) => {
            text.splice(0..0, a.bytes());
            text.extend_from_slice(b.as_bytes());
        }
    }
    text
}

// ---- the properties ------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    /// Bytes of any kind: refused with a reason, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        refused_when_not_json(&bytes);
        prop_assert!(json_depth(&bytes) <= bytes.len());
    }

    /// JSON-looking text made of the characters that matter to a parser.
    #[test]
    fn json_shaped_noise_never_panics(text in r#"[{}\[\]":,0-9a-z \\.eE+-]{0,200}"#) {
        refused_when_not_json(text.as_bytes());
    }

    /// Valid bodies with structural and textual corruption.
    #[test]
    fn mutated_valid_bodies_are_refused_with_a_reason(
        body in valid_body(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), edit()), 0..4),
        text_edit in text_edit(),
    ) {
        let mut v = body;
        for (at, e) in &edits {
            let mut at = at.index(places(&v));
            apply(&mut v, &mut at, e);
        }
        let text = apply_text(v.to_string().into_bytes(), &text_edit);
        // An edit may leave a body valid; one that breaks the JSON itself
        // must be refused by every decoder.
        refused_when_not_json(&text);
    }

    /// A valid body decodes, validates, and says the same thing after a
    /// round trip through its own serialization.
    #[test]
    fn valid_tasks_round_trip(task in valid_task(false)) {
        let text = task.to_string();
        let t: SubmitTask = decode(text.as_bytes()).expect("valid task decodes");
        let first = t.clone().validate(NOW).expect("valid task validates");
        let again: SubmitTask =
            decode(&serde_json::to_vec(&t).expect("encodes")).expect("decodes again");
        prop_assert_eq!(again.validate(NOW).expect("validates again"), first.clone());
        prop_assert_eq!(&*first.spec.kind, task["type"].as_str().expect("type"));
        // The payload is kept as its text, byte for byte.
        prop_assert_eq!(&*first.payload, task["payload"].to_string());
    }

    #[test]
    fn valid_batches_round_trip(tasks in prop::collection::vec(valid_task(false), 1..6)) {
        let text = json!({"tasks": tasks}).to_string();
        let b: SubmitBatch = decode(text.as_bytes()).expect("valid batch decodes");
        prop_assert_eq!(b.tasks.len(), tasks.len());
        for (t, v) in b.tasks.into_iter().zip(&tasks) {
            let valid = t.validate(NOW).expect("each task validates");
            prop_assert_eq!(&*valid.spec.kind, v["type"].as_str().expect("type"));
        }
    }

    #[test]
    fn valid_registrations_round_trip(w in valid_register()) {
        let r: RegisterWorker = decode(w.to_string().as_bytes()).expect("decodes");
        let spec = r.clone().validate().expect("validates");
        let again: RegisterWorker =
            decode(&serde_json::to_vec(&r).expect("encodes")).expect("decodes again");
        let spec2 = again.validate().expect("validates again");
        prop_assert_eq!(spec.capacity, spec2.capacity);
        prop_assert_eq!(&spec.types, &spec2.types);
        prop_assert_eq!(&spec.labels, &spec2.labels);
        prop_assert_eq!(spec.capacity, w["capacity"].as_u64().expect("capacity") as u32);
    }

    #[test]
    fn valid_polls_round_trip(p in valid_poll()) {
        let req: PollRequest = decode(p.to_string().as_bytes()).expect("decodes");
        let (max, wait) = req.limits(7).expect("limits");
        prop_assert_eq!(max as u64, p["max"].as_u64().unwrap_or(7));
        prop_assert_eq!(wait, p["wait_ms"].as_u64().unwrap_or(0));
        for r in req.results.unwrap_or_default() {
            r.validate().expect("each report validates");
        }
    }

    #[test]
    fn valid_schedules_round_trip(s in valid_schedule()) {
        let c: CreateSchedule = decode(s.to_string().as_bytes()).expect("decodes");
        let v = c.validate(NOW).expect("validates");
        prop_assert_eq!(&v.name, s["name"].as_str().expect("name"));
        prop_assert_eq!(
            v.catch_up_limit,
            s["catch_up_limit"].as_u64().map_or(DEFAULT_CATCH_UP_LIMIT, |l| l as u32)
        );
        let parts = stored_parts(&v).expect("the stored form decodes");
        prop_assert_eq!(parts.cron.expression(), v.parts.cron.expression());
        prop_assert_eq!(
            serde_json::to_string(&parts.template).expect("encodes"),
            serde_json::to_string(&v.parts.template).expect("encodes")
        );
        let at = parts.cron.next_after(NOW).expect("every listed expression fires");
        let t = fire_task(&parts.template, &v.name, at, at + 5).expect("fire task");
        prop_assert_eq!(t.idempotency_key, Some(format!("schedule:{}:{at}", v.name)));
    }

    /// Query strings and path parameters, as the server gets them: any text.
    #[test]
    fn path_and_query_parameters_never_panic(
        state in prop::option::of(".{0,12}"),
        kind in prop::option::of(".{0,12}"),
        queue in prop::option::of(".{0,12}"),
        limit in prop::option::of(prop_oneof![".{0,8}", any::<i64>().prop_map(|n| n.to_string())]),
        cursor in prop::option::of(prop_oneof![".{0,8}", any::<u64>().prop_map(|n| n.to_string())]),
        id in ".{0,24}",
    ) {
        let q = ListTasks { state, kind, queue, limit, cursor };
        if let Err(e) = q.validate() {
            check_field_error(&e, "list");
        }
        for r in [
            parse_task_id("id", &id).map(|_| ()),
            parse_worker_id("id", Some(&id)).map(|_| ()),
            parse_queue_name(&id).map(|_| ()),
            parse_schedule_name(&id).map(|_| ()),
            validate_name("type", &id),
        ] {
            if let Err(e) = r {
                check_field_error(&e, "path");
            }
        }
    }
}

// ---- examples the generators may miss ----------------------------------------------

#[test]
fn hostile_examples_are_refused_with_a_reason() {
    let deep = |n: usize| {
        format!(
            r#"{{"type": "x", "payload": {}1{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let cases: Vec<Vec<u8>> = vec![
        deep(63).into_bytes(),
        deep(64).into_bytes(),
        deep(100_000).into_bytes(),
        format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes(),
        br#"{"type": "x", "type": "y"}"#.to_vec(),
        br#"{"type": "x", "priority": 1e400}"#.to_vec(),
        br#"{"type": "x", "priority": 99999999999999999999999}"#.to_vec(),
        br#"{"type": "x", "delay_ms": 9223372036854775807}"#.to_vec(),
        br#"{"type": "x", "run_at": "+275760-09-13T00:00:00Z"}"#.to_vec(),
        br#"{"type": "x", "run_at": "9999-12-31T23:59:60Z"}"#.to_vec(),
        br#"{"type": "x", "backoff": {"multiplier": 1e308, "max_ms": 9223372036854775807}}"#.to_vec(),
        br#"{"type": "x", "strategy": "sharding", "shards": -9223372036854775808}"#.to_vec(),
        b"{\"type\": \"x\x00\"}".to_vec(),
        b"{\"type\": \"\\u0000\"}".to_vec(),
        br#"{"type": "\ud800"}"#.to_vec(),
        b"{\"type\": \"\xff\xfe\"}".to_vec(),
        br#"{"tasks": [{"type": "x"}, {"type": "y", "depends_on": ["-1"]}]}"#.to_vec(),
        br#"{"types": ["x"], "labels": {"": "v"}}"#.to_vec(),
        br#"{"results": [{"task_id": "1", "result": 1, "error": "e"}]}"#.to_vec(),
        br#"{"results": [{}]}"#.to_vec(),
        br#"{"worker_id": "w", "retry_after_ms": 604800001}"#.to_vec(),
        br#"{"name": "n", "cron": "0 0 31 2 *", "task": {"type": "x"}}"#.to_vec(),
        br#"{"name": "n", "cron": "* * * * *", "timezone": "../../etc/passwd", "task": {"type": "x"}}"#.to_vec(),
        br#"{"name": "n", "cron": "*/0 * * * *", "task": {"type": "x"}}"#.to_vec(),
        br#"{"name": "n", "cron": "1-99999999999 * * * *", "task": {"type": "x"}}"#.to_vec(),
        br#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "strategy": "broadcast"}}"#.to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        b"{}\x00".to_vec(),
        Vec::new(),
        b" \n ".to_vec(),
    ];
    // Two of them are valid, and the task decoder alone takes them: a
    // payload at the depth limit, and a leap second (RFC 3339 allows :60).
    let valid_tasks = [
        deep(63).into_bytes(),
        br#"{"type": "x", "run_at": "9999-12-31T23:59:60Z"}"#.to_vec(),
    ];
    for text in &cases {
        let expected: &[&str] = if valid_tasks.contains(text) {
            &["task"]
        } else {
            &[]
        };
        assert_eq!(
            every_decoder(text),
            expected,
            "the decoders that took {}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn a_missing_required_member_is_named() {
    let p = decode::<SubmitBatch>(b"{}").expect_err("tasks is required");
    assert_eq!(p.field.as_deref(), Some("tasks"), "{p:?}");
    let p = decode::<PollRequest>(br#"{"results": [{"result": 1}]}"#).expect_err("task_id");
    assert_eq!(p.field.as_deref(), Some("results[0].task_id"), "{p:?}");
}

#[test]
fn a_duplicate_member_is_named() {
    let p = decode::<SubmitTask>(br#"{"type": "x", "type": "y"}"#).expect_err("duplicate");
    assert_eq!(p.status, 400);
    assert_eq!(p.field.as_deref(), Some("type"), "{p:?}");
}
