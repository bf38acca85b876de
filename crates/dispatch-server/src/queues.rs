//! Queues: `GET /v1/queues`, pause and resume, the queue and type settings
//! of the config file, and the default routing strategies they give.
//!
//! The core keeps each queue's weight, limits and pause flag
//! ([`dispatch_core::Scheduler::configure_queue`], `pause_queue`, ...).
//! [`QueueSettings`] is what the config file says; [`QueueSettings::apply`]
//! hands it to a fresh scheduler at start-up together with the pause states
//! kept by the store. A pause or resume is stored first
//! ([`Write::SetQueuePaused`], acknowledged by the store) and applied to
//! the core after, so an answered pause survives a crash; a resume settles
//! the core at once, which dispatches what the queue holds.
//!
//! The listing shows every queue the core knows (named by a task since
//! start-up, configured, or paused or resumed once) and every queue the
//! store still holds tasks of: live counts come from the core, finished
//! ones from the store's aggregate.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use dispatch_core::{QueueConfig, QueueInfo, Scheduler, Strategy, TaskState, TypeConfig};
use dispatch_proto::{
    FieldError, QueueJson, QueueList, QueueSettingsPatch, SubmitTask, ValidTask, parse_queue_name,
};
use dispatch_store::{QueueConfigRecord, Write};

use crate::api::{ApiError, JsonBody, json};
use crate::app::{App, acked};

/// A queue's settings from the config file (`[queues.NAME]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueDefaults {
    /// Weight and limits, handed to the core.
    pub config: QueueConfig,
    /// The strategy of its tasks that name none (after their type's).
    pub strategy: Option<Strategy>,
    /// Most queued and scheduled live tasks it holds; submissions beyond
    /// answer 429.
    pub max_depth: Option<u64>,
}

/// A task type's settings from the config file (`[types.NAME]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeDefaults {
    /// Limits, handed to the core.
    pub config: TypeConfig,
    /// The strategy of its tasks that name none (before their queue's).
    pub strategy: Option<Strategy>,
}

/// Queue and type settings, by name, as the config file gives them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSettings {
    /// `[queues.NAME]` sections.
    pub queues: BTreeMap<String, QueueDefaults>,
    /// `[types.NAME]` sections.
    pub types: BTreeMap<String, TypeDefaults>,
}

impl QueueSettings {
    /// The strategy of a task of `kind` in `queue` that names none: its
    /// type's default, else its queue's, with a description of where it
    /// comes from; `None` means `round_robin`.
    pub fn default_strategy(&self, kind: &str, queue: &str) -> Option<(Strategy, String)> {
        let of_type = self
            .types
            .get(kind)
            .and_then(|t| t.strategy)
            .map(|s| (s, format!("type {kind:?}")));
        of_type.or_else(|| {
            self.queues
                .get(queue)
                .and_then(|q| q.strategy)
                .map(|s| (s, format!("queue {queue:?}")))
        })
    }

    /// True when some queue or type has a rate limit, whose next token the
    /// timer loop must wake up for.
    pub(crate) fn rate_limited(&self) -> bool {
        self.queues
            .values()
            .any(|q| q.config.rate_per_sec.is_some())
            || self.types.values().any(|t| t.config.rate_per_sec.is_some())
    }

    /// These settings with the queues the API changed (stored) in place of
    /// the config file's: the API wins once it has set a queue.
    pub(crate) fn with_stored(mut self, stored: Vec<QueueConfigRecord>) -> Self {
        for c in stored {
            let defaults = QueueDefaults {
                config: QueueConfig {
                    weight: c.weight.max(1),
                    max_running: c.max_running,
                    rate_per_sec: c.rate_per_sec,
                    burst: c.burst,
                    max_per_key: c.max_per_key,
                },
                strategy: c.strategy,
                max_depth: c.max_depth,
            };
            self.queues.insert(c.name, defaults);
        }
        self
    }

    /// Hands the settings to a fresh scheduler, then the pause states the
    /// store kept.
    pub(crate) fn apply<B>(&self, sched: &mut Scheduler<B>, stored: &[(String, bool)]) {
        for (name, q) in &self.queues {
            sched.configure_queue(name, q.config.clone());
        }
        for (kind, t) in &self.types {
            sched.configure_type(kind, t.config.clone());
        }
        for (name, paused) in stored {
            if *paused {
                sched.pause_queue(name);
            } else {
                sched.resume_queue(name);
            }
        }
    }
}

/// Gives a submitted task that named no strategy (`explicit` false) the
/// default of its type or queue. A default of `consistent_hash` needs a
/// `routing_key`: without one the submission is refused, naming it.
pub(crate) fn apply_default_strategy(
    settings: &QueueSettings,
    explicit: bool,
    task: &mut ValidTask,
) -> Result<(), FieldError> {
    if explicit {
        return Ok(());
    }
    let Some((strategy, from)) = settings.default_strategy(&task.spec.kind, &task.spec.queue)
    else {
        return Ok(());
    };
    if strategy == Strategy::ConsistentHash && task.spec.routing_key.is_none() {
        return Err(FieldError::new(
            "routing_key",
            format!("is required: tasks of {from} default to strategy consistent_hash"),
        ));
    }
    task.spec.strategy = strategy;
    Ok(())
}

/// Checks a schedule's task template against the default strategies, as
/// each fire's task will be (a `consistent_hash` default needs the
/// template to carry a `routing_key`).
pub(crate) fn check_template(
    settings: &QueueSettings,
    template: &SubmitTask,
) -> Result<(), FieldError> {
    let (Some(kind), None, None) = (&template.kind, &template.strategy, &template.routing_key)
    else {
        return Ok(());
    };
    let queue = template.queue.as_deref().unwrap_or("default");
    match settings.default_strategy(kind, queue) {
        Some((Strategy::ConsistentHash, from)) => Err(FieldError::new(
            "task.routing_key",
            format!("is required: tasks of {from} default to strategy consistent_hash"),
        )),
        _ => Ok(()),
    }
}

/// Every queue, by name, as the API shows it.
async fn all_queues(app: &Arc<App>) -> Result<Vec<QueueJson>, ApiError> {
    let live = app.lock().sched.queues();
    // Finished tasks' writes were sent before the snapshot: wait for them,
    // so a task that ended before it is counted.
    app.barrier().await?;
    let store = app.store.clone();
    let stored = tokio::task::spawn_blocking(move || store.count_by_queue_state())
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))??;
    let mut finished: BTreeMap<String, Vec<(TaskState, u64)>> = BTreeMap::new();
    for (queue, state, n) in stored {
        finished.entry(queue).or_default().push((state, n));
    }
    let mut infos: BTreeMap<String, QueueInfo> =
        live.into_iter().map(|q| (q.name.to_string(), q)).collect();
    for name in finished.keys() {
        infos.entry(name.clone()).or_insert_with(|| QueueInfo {
            name: Arc::from(name.as_str()),
            paused: false,
            config: QueueConfig::default(),
            scheduled: 0,
            queued: 0,
            running: 0,
        });
    }
    let settings = app.queue_settings();
    Ok(infos
        .into_iter()
        .map(|(name, info)| {
            let q = settings.queues.get(&name);
            QueueJson::new(
                &info,
                q.and_then(|q| q.strategy),
                q.and_then(|q| q.max_depth),
                finished.remove(&name).unwrap_or_default(),
            )
        })
        .collect())
}

/// `GET /v1/queues`.
#[utoipa::path(
    get,
    path = "/v1/queues",
    summary = "List queues",
    description = "Every queue named by a task, configured, or paused once, with its settings and its tasks counted by state.",
    tag = "queues",
    responses((status = 200, description = "Every queue, by name, with its settings and counts.", body = QueueList)),
)]
pub(crate) async fn list(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let queues = all_queues(&app).await?;
    Ok(json(StatusCode::OK, &QueueList { queues }))
}

/// `PATCH /v1/queues/{name}`: changes a queue's weight, limits,
/// `max_depth` or default strategy (a member set to null clears it); 200
/// with the queue.
///
/// The new settings are stored whole and acknowledged, then put in force:
/// the server's copy (depth and strategy, read by submissions) and the
/// core's (weight and limits, for the next dispatch decision; tasks
/// running now are not touched). Serialized with pauses by `pause_order`,
/// so the core ends in the state the store has last.
#[utoipa::path(
    patch,
    path = "/v1/queues/{name}",
    summary = "Change a queue's settings",
    description = "Any of `weight`, `max_running`, `rate_per_sec`, `burst`, `max_per_key`, `max_depth` and `strategy`; a member set to null clears it. Stored: the API's settings win over the config file at every start.",
    tag = "queues",
    params(("name" = String, Path, description = "The queue's name (a queue exists once named).")),
    request_body(content = Object, description = "The settings to change."),
    responses(
        (status = 200, description = "Changed; the queue.", body = QueueJson),
        (status = 422, description = "A setting is invalid, or the name is; `field` names it."),
    ),
)]
pub(crate) async fn patch(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let name = parse_queue_name(&name)?;
    let patch = QueueSettingsPatch::parse(&body)?;
    {
        let _order = app.pause_order.lock().await;
        let mut settings = QueueSettings::clone(&app.queue_settings());
        let mut q = match settings.queues.get(name) {
            Some(q) => q.clone(),
            // A queue the config file does not name starts from what the
            // core has (the defaults).
            None => QueueDefaults {
                config: app
                    .lock()
                    .sched
                    .queues()
                    .into_iter()
                    .find(|i| &*i.name == name)
                    .map(|i| i.config)
                    .unwrap_or_default(),
                ..QueueDefaults::default()
            },
        };
        patch.apply(&mut q.config, &mut q.max_depth, &mut q.strategy)?;
        let record = QueueConfigRecord {
            name: name.to_owned(),
            weight: q.config.weight,
            max_running: q.config.max_running,
            rate_per_sec: q.config.rate_per_sec,
            burst: q.config.burst,
            max_per_key: q.config.max_per_key,
            max_depth: q.max_depth,
            strategy: q.strategy,
        };
        acked(Some(app.write(Write::PutQueueConfig(record))?)).await?;
        let config = q.config.clone();
        settings.queues.insert(name.to_owned(), q);
        app.set_queue_settings(settings);
        app.apply(|step| step.shared.sched.configure_queue(name, config));
    }
    // A new rate may let a task start at a later token.
    app.timer_wake.notify_one();
    tracing::info!(queue = name, "queue settings changed");
    let queue = all_queues(&app)
        .await?
        .into_iter()
        .find(|q| q.name == name)
        .ok_or_else(|| ApiError::new(500, "a queue vanished"))?;
    Ok(json(StatusCode::OK, &queue))
}

/// `POST /v1/queues/{name}/pause`: 200 with the queue.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/pause",
    summary = "Pause a queue",
    description = "No task of the queue starts until it is resumed; running tasks go on. Stored: it survives a restart.",
    tag = "queues",
    params(("name" = String, Path, description = "The queue's name (a queue exists once named).")),
    responses(
        (status = 200, description = "Paused: nothing more starts from it; the queue.", body = QueueJson),
        (status = 422, description = "The name is not a valid queue name."),
    ),
)]
pub(crate) async fn pause(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&app, &name, true).await
}

/// `POST /v1/queues/{name}/resume`: 200 with the queue.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/resume",
    summary = "Resume a queue",
    description = "Its tasks are dispatched again at once.",
    tag = "queues",
    params(("name" = String, Path, description = "The queue's name (a queue exists once named).")),
    responses(
        (status = 200, description = "Resumed: its tasks are dispatched again; the queue.", body = QueueJson),
        (status = 422, description = "The name is not a valid queue name."),
    ),
)]
pub(crate) async fn resume(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(&app, &name, false).await
}

/// Stores the new state, waits for the commit, then applies it to the
/// core and settles (a resume dispatches at once).
async fn set_paused(app: &Arc<App>, name: &str, paused: bool) -> Result<Response, ApiError> {
    let name = parse_queue_name(name)?;
    {
        let _order = app.pause_order.lock().await;
        let write = Write::SetQueuePaused {
            name: name.to_owned(),
            paused,
        };
        acked(Some(app.write(write)?)).await?;
        app.apply(|step| {
            if paused {
                step.shared.sched.pause_queue(name);
            } else {
                step.shared.sched.resume_queue(name);
            }
        });
    }
    // A rate-limited queue may now wait for its next token.
    app.timer_wake.notify_one();
    tracing::info!(queue = name, paused, "queue state changed");
    let queue = all_queues(app)
        .await?
        .into_iter()
        .find(|q| q.name == name)
        .ok_or_else(|| ApiError::new(500, "a queue vanished"))?;
    Ok(json(StatusCode::OK, &queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> QueueSettings {
        let mut s = QueueSettings::default();
        s.queues.insert(
            "hashed".into(),
            QueueDefaults {
                strategy: Some(Strategy::ConsistentHash),
                ..QueueDefaults::default()
            },
        );
        s.queues.insert(
            "spread".into(),
            QueueDefaults {
                strategy: Some(Strategy::Random),
                ..QueueDefaults::default()
            },
        );
        s.types.insert(
            "render".into(),
            TypeDefaults {
                strategy: Some(Strategy::WeightedRoundRobin),
                ..TypeDefaults::default()
            },
        );
        s
    }

    fn submit(json: &str) -> Result<Strategy, FieldError> {
        let req: SubmitTask = serde_json::from_str(json).unwrap();
        let explicit = req.strategy.is_some();
        let mut task = req.validate(0)?;
        apply_default_strategy(&settings(), explicit, &mut task)?;
        Ok(task.spec.strategy)
    }

    #[test]
    fn the_task_beats_its_type_which_beats_its_queue() {
        let cases = [
            (r#"{"type": "x"}"#, Strategy::RoundRobin),
            (r#"{"type": "x", "queue": "spread"}"#, Strategy::Random),
            (
                r#"{"type": "render", "queue": "spread"}"#,
                Strategy::WeightedRoundRobin,
            ),
            (
                r#"{"type": "render", "queue": "spread", "strategy": "least_loaded"}"#,
                Strategy::LeastLoaded,
            ),
            (
                r#"{"type": "render", "queue": "hashed"}"#,
                Strategy::WeightedRoundRobin,
            ),
            (
                r#"{"type": "x", "queue": "hashed", "routing_key": "k"}"#,
                Strategy::ConsistentHash,
            ),
            (
                r#"{"type": "x", "queue": "hashed", "strategy": "round_robin"}"#,
                Strategy::RoundRobin,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(submit(json), Ok(want), "{json}");
        }
    }

    #[test]
    fn a_consistent_hash_default_needs_a_routing_key() {
        let e = submit(r#"{"type": "x", "queue": "hashed"}"#).unwrap_err();
        assert_eq!(e.field, "routing_key");
        assert!(e.message.contains("queue \"hashed\""), "{e}");
    }

    #[test]
    fn a_schedule_template_is_checked_like_its_fires_tasks() {
        let template = |json: &str| serde_json::from_str::<SubmitTask>(json).unwrap();
        let e = check_template(
            &settings(),
            &template(r#"{"type": "x", "queue": "hashed"}"#),
        )
        .unwrap_err();
        assert_eq!(e.field, "task.routing_key");
        for ok in [
            r#"{"type": "x", "queue": "hashed", "routing_key": "k"}"#,
            r#"{"type": "x", "queue": "hashed", "strategy": "random"}"#,
            r#"{"type": "render", "queue": "hashed"}"#,
            r#"{"type": "x"}"#,
        ] {
            assert_eq!(check_template(&settings(), &template(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn settings_and_stored_pauses_reach_the_core() {
        let mut s = settings();
        s.queues.get_mut("spread").unwrap().config.max_running = Some(2);
        let mut sched: Scheduler<()> = Scheduler::new(dispatch_core::Config::default(), 1);
        s.apply(
            &mut sched,
            &[("spread".into(), true), ("other".into(), false)],
        );
        let queues = sched.queues();
        let names: Vec<&str> = queues.iter().map(|q| &*q.name).collect();
        assert_eq!(names, ["hashed", "other", "spread"]);
        assert!(queues[2].paused && !queues[1].paused);
        assert_eq!(queues[2].config.max_running, Some(2));
    }
}
