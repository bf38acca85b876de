//! Cron schedules on the wire: creation ([`CreateSchedule`]) and its
//! validation, the Schedule JSON ([`ScheduleJson`]), and the task each fire
//! makes from the schedule's template ([`fire_task`]).
//!
//! A schedule's `task` is a template: any fields of a task submission except
//! those a fire decides. Each fire's task gets the idempotency key
//! `schedule:{name}:{fire_at_ms}` ([`fire_key`]), which says which fire it
//! belongs to and makes a fire written twice one task; it runs at its fire
//! time, so a template cannot give `run_at` or `delay_ms`, and it cannot
//! depend on fixed task ids.

use dispatch_core::Millis;
use dispatch_cron::{CronSchedule, Misfire};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::FieldError;
use crate::task::{SubmitTask, ValidTask, validate_name};

/// Missed fires one catch-up runs, unless the schedule says otherwise.
pub const DEFAULT_CATCH_UP_LIMIT: u32 = 100;
/// The largest `catch_up_limit` accepted.
pub const MAX_CATCH_UP_LIMIT: u32 = 1_000;

/// `POST /v1/schedules`.
///
/// Every field is optional at the serde level so that validation, not the
/// parser, explains what is missing or wrong.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Unique name (required), the characters of a task type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, pattern = "^[A-Za-z0-9._:-]{1,128}$")
    )]
    pub name: Option<String>,
    /// Cron expression (required): 5 fields, or 6 with seconds first.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub cron: Option<String>,
    /// IANA time zone, default `UTC`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The task template (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub task: Option<SubmitTask>,
    /// `skip`, `fire_once` (default) or `catch_up`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    /// Most missed fires one catch-up runs, 1..=1000, default 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub catch_up_limit: Option<i64>,
    /// A paused schedule does not fire; default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `PATCH /v1/schedules/{name}`: the fields to change; an absent (or
/// null) field keeps its value. The result is validated as a creation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PatchSchedule {
    /// The schedule's own name, if given: a schedule is not renamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new cron expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A new time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A new task template (replaces the old one whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<SubmitTask>,
    /// A new misfire policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misfire: Option<String>,
    /// A new catch-up limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_limit: Option<i64>,
    /// Paused or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

impl PatchSchedule {
    /// The creation request `current` becomes with this patch, to validate
    /// like any creation. Giving another name is refused, naming `name`.
    pub fn merge(self, current: CreateSchedule) -> Result<CreateSchedule, FieldError> {
        if let (Some(given), Some(name)) = (&self.name, &current.name)
            && given != name
        {
            return Err(FieldError::new(
                "name",
                format!("a schedule cannot be renamed (this one is {name:?}); create another"),
            ));
        }
        Ok(CreateSchedule {
            name: current.name,
            cron: self.cron.or(current.cron),
            timezone: self.timezone.or(current.timezone),
            task: self.task.or(current.task),
            misfire: self.misfire.or(current.misfire),
            catch_up_limit: self.catch_up_limit.or(current.catch_up_limit),
            paused: self.paused.or(current.paused),
        })
    }

    /// Whether the patch changes when the schedule fires (its expression or
    /// zone), so that fires are decided anew from now.
    pub fn moves_fires(&self, current: &CreateSchedule) -> bool {
        (self.cron.is_some() && self.cron != current.cron)
            || (self.timezone.is_some() && self.timezone != current.timezone)
    }
}

/// A schedule that passed validation: what the server stores of it (its
/// expression, time zone and misfire policy are in `parts`) and what it
/// needs to run it.
#[derive(Clone, Debug)]
pub struct ValidSchedule {
    /// Unique name.
    pub name: String,
    /// The task template as text, to store ([`ScheduleParts::decode`]
    /// reads it back).
    pub task_text: Box<str>,
    /// Most missed fires one catch-up runs.
    pub catch_up_limit: u32,
    /// A paused schedule does not fire.
    pub paused: bool,
    /// When it was created: the first fire is after this.
    pub created_at: Millis,
    /// The parsed schedule, parts decoded.
    pub parts: ScheduleParts,
}

/// A stored schedule's expression, policy and template, decoded.
#[derive(Clone, Debug)]
pub struct ScheduleParts {
    /// The expression in its time zone.
    pub cron: CronSchedule,
    /// The misfire policy.
    pub misfire: Misfire,
    /// The task template, already known to validate.
    pub template: SubmitTask,
}

/// The idempotency key of the task of `schedule`'s fire at `fire_at`.
pub fn fire_key(schedule: &str, fire_at: Millis) -> String {
    format!("schedule:{schedule}:{fire_at}")
}

fn parse_misfire(s: &str) -> Result<Misfire, FieldError> {
    Misfire::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Misfire::ALL.iter().map(|m| m.as_str()).collect();
        FieldError::new(
            "misfire",
            format!("unknown misfire policy {s:?}; one of {}", names.join(", ")),
        )
    })
}

/// Checks a template: the fields a fire decides are refused, the rest is
/// validated like a submission, with errors under `task.`.
fn validate_template(task: &SubmitTask, now: Millis) -> Result<(), FieldError> {
    let decided = [
        (
            task.idempotency_key.is_some(),
            "idempotency_key",
            "is set by each fire to schedule:{name}:{fire_at_ms}",
        ),
        (
            task.run_at.is_some(),
            "run_at",
            "a schedule's task runs at its fire time",
        ),
        (
            task.delay_ms.is_some(),
            "delay_ms",
            "a schedule's task runs at its fire time",
        ),
        (
            task.depends_on.as_ref().is_some_and(|d| !d.is_empty()),
            "depends_on",
            "a schedule's tasks cannot depend on fixed task ids",
        ),
        (
            matches!(task.strategy.as_deref(), Some("broadcast" | "sharding")),
            "strategy",
            "broadcast and sharding are for submitted tasks in this version",
        ),
    ];
    if let Some((_, field, why)) = decided.into_iter().find(|(set, _, _)| *set) {
        return Err(FieldError::new(
            format!("task.{field}"),
            format!("a template cannot give {field}: {why}"),
        ));
    }
    task.clone()
        .validate(now)
        .map(|_| ())
        .map_err(|e| e.within("task"))
}

impl CreateSchedule {
    /// Validates the request received at `now`.
    pub fn validate(self, now: Millis) -> Result<ValidSchedule, FieldError> {
        let name = self
            .name
            .ok_or_else(|| FieldError::new("name", "is required"))?;
        validate_name("name", &name)?;
        let expression = self
            .cron
            .ok_or_else(|| FieldError::new("cron", "is required"))?;
        let timezone = self.timezone.unwrap_or_else(|| "UTC".to_owned());
        let cron = CronSchedule::parse(&expression, &timezone)
            .map_err(|e| FieldError::new(e.field, e.message))?;
        let template = self
            .task
            .ok_or_else(|| FieldError::new("task", "is required: the task each fire submits"))?;
        validate_template(&template, now)?;
        let misfire = match &self.misfire {
            Some(m) => parse_misfire(m)?,
            None => Misfire::default(),
        };
        let limit = self
            .catch_up_limit
            .unwrap_or(i64::from(DEFAULT_CATCH_UP_LIMIT));
        if !(1..=i64::from(MAX_CATCH_UP_LIMIT)).contains(&limit) {
            return Err(FieldError::new(
                "catch_up_limit",
                format!("must be between 1 and {MAX_CATCH_UP_LIMIT}, got {limit}"),
            ));
        }
        let task_text = serde_json::to_string(&template)
            .map_err(|e| FieldError::new("task", format!("cannot be encoded: {e}")))?;
        Ok(ValidSchedule {
            name,
            task_text: task_text.into(),
            catch_up_limit: limit as u32,
            paused: self.paused.unwrap_or(false),
            created_at: now,
            parts: ScheduleParts {
                cron,
                misfire,
                template,
            },
        })
    }
}

impl ScheduleParts {
    /// Decodes a stored schedule's expression, time zone, misfire policy
    /// and template text. An error means the stored text no longer
    /// validates (written by another version, or damaged).
    pub fn decode(
        cron: &str,
        timezone: &str,
        misfire: &str,
        task: &str,
    ) -> Result<ScheduleParts, FieldError> {
        let cron =
            CronSchedule::parse(cron, timezone).map_err(|e| FieldError::new(e.field, e.message))?;
        let misfire = parse_misfire(misfire)?;
        let template: SubmitTask = serde_json::from_str(task)
            .map_err(|e| FieldError::new("task", format!("stored template: {e}")))?;
        Ok(ScheduleParts {
            cron,
            misfire,
            template,
        })
    }
}

/// The task of `schedule`'s fire at `fire_at`, made at `now` from the
/// template: keyed by [`fire_key`].
pub fn fire_task(
    template: &SubmitTask,
    schedule: &str,
    fire_at: Millis,
    now: Millis,
) -> Result<ValidTask, FieldError> {
    // The key is set after validation: it is in the reserved namespace.
    let mut task = template
        .clone()
        .validate(now)
        .map_err(|e| e.within("task"))?;
    task.idempotency_key = Some(fire_key(schedule, fire_at));
    Ok(task)
}

/// Checks a schedule name given in a path.
pub fn parse_schedule_name(s: &str) -> Result<&str, FieldError> {
    validate_name("name", s).map(|()| s)
}

/// A schedule as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleJson {
    /// Unique name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// The task template.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub task: Box<RawValue>,
    /// Misfire policy.
    pub misfire: String,
    /// Most missed fires one catch-up runs.
    pub catch_up_limit: u32,
    /// A paused schedule does not fire.
    pub paused: bool,
    /// Created at.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
    /// The next fire; null when paused.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub next_fire_at: Option<String>,
    /// The latest fire, if any.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_fire_at: Option<String>,
}

/// `GET /v1/schedules`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleList {
    /// Every schedule, by name.
    pub schedules: Vec<ScheduleJson>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: &str) -> Result<ValidSchedule, FieldError> {
        crate::decode::<CreateSchedule>(json.as_bytes())
            .map_err(|p| FieldError::new(p.field.unwrap_or_default(), p.detail))?
            .validate(1_000)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let v = create(r#"{"name": "nightly", "cron": "0 3 * * *", "task": {"type": "report"}}"#)
            .unwrap();
        assert_eq!(v.parts.cron.timezone(), "UTC");
        assert_eq!(v.parts.misfire.as_str(), "fire_once");
        assert_eq!(v.catch_up_limit, DEFAULT_CATCH_UP_LIMIT);
        assert!(!v.paused);
        assert_eq!(v.created_at, 1_000);
        assert_eq!(&*v.task_text, r#"{"type":"report"}"#);
        let parts = ScheduleParts::decode("0 3 * * *", "UTC", "fire_once", &v.task_text).unwrap();
        assert_eq!(parts.misfire, Misfire::FireOnce);
        assert_eq!(parts.cron.expression(), "0 3 * * *");
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok_task = r#""task": {"type": "x"}"#;
        let cases = [
            (format!(r#"{{"cron": "* * * * *", {ok_task}}}"#), "name"),
            (format!(r#"{{"name": "a b", "cron": "* * * * *", {ok_task}}}"#), "name"),
            (format!(r#"{{"name": "n", {ok_task}}}"#), "cron"),
            (format!(r#"{{"name": "n", "cron": "* * *", {ok_task}}}"#), "cron"),
            (format!(r#"{{"name": "n", "cron": "99 * * * *", {ok_task}}}"#), "cron"),
            (
                format!(r#"{{"name": "n", "cron": "* * * * *", "timezone": "Nowhere/Town", {ok_task}}}"#),
                "timezone",
            ),
            (r#"{"name": "n", "cron": "* * * * *"}"#.to_owned(), "task"),
            (r#"{"name": "n", "cron": "* * * * *", "task": {}}"#.to_owned(), "task.type"),
            (
                r#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "priority": 500}}"#.to_owned(),
                "task.priority",
            ),
            (
                r#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "idempotency_key": "k"}}"#.to_owned(),
                "task.idempotency_key",
            ),
            (
                r#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "delay_ms": 5}}"#.to_owned(),
                "task.delay_ms",
            ),
            (
                r#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "run_at": "2026-01-01T00:00:00Z"}}"#.to_owned(),
                "task.run_at",
            ),
            (
                r#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "depends_on": ["1"]}}"#.to_owned(),
                "task.depends_on",
            ),
            (
                r#"{"name": "n", "cron": "* * * * *", "task": {"type": "x", "prioirty": 1}}"#.to_owned(),
                "task.prioirty",
            ),
            (format!(r#"{{"name": "n", "cron": "* * * * *", "misfire": "later", {ok_task}}}"#), "misfire"),
            (
                format!(r#"{{"name": "n", "cron": "* * * * *", "catch_up_limit": 0, {ok_task}}}"#),
                "catch_up_limit",
            ),
            (format!(r#"{{"name": "n", "cron": "* * * * *", "paused": "yes", {ok_task}}}"#), "paused"),
            (format!(r#"{{"name": "n", "cron": "* * * * *", "every": 5, {ok_task}}}"#), "every"),
        ];
        for (json, field) in cases {
            let e = create(&json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn a_fire_task_is_keyed_by_its_fire() {
        let v = create(
            r#"{"name": "n", "cron": "* * * * * *", "task": {"type": "x", "payload": {"a": [1]}, "priority": 7}}"#,
        )
        .unwrap();
        let t = fire_task(&v.parts.template, "n", 61_000, 61_004).unwrap();
        assert_eq!(t.idempotency_key.as_deref(), Some("schedule:n:61000"));
        // The payload is kept verbatim, as for a submission.
        assert_eq!(&*t.payload, r#"{"a": [1]}"#);
        assert_eq!(t.spec.priority, 7);
        assert_eq!(t.spec.run_at, None);
        assert_eq!(t.created_at, 61_004);
        assert_eq!(
            &*v.task_text,
            r#"{"type":"x","payload":{"a": [1]},"priority":7}"#
        );
    }
}
