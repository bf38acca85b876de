//! Handlers, their context and their errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::watch;

/// What a handler knows about the task it runs.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// The task's id.
    pub id: String,
    /// Its type.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The attempt's time limit, if the task has one.
    pub timeout: Option<Duration>,
    pub(crate) cancel: watch::Receiver<bool>,
}

impl TaskContext {
    /// Resolves when the scheduler cancelled this task or took it back;
    /// select on it to stop early and clean up.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// True once the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// How an attempt failed, and what the scheduler should do next.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskError {
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) abort: bool,
}

impl TaskError {
    /// Retry after the task's backoff (if attempts are left).
    pub fn retry(message: impl std::fmt::Display) -> Self {
        TaskError {
            message: message.to_string(),
            retry_after: None,
            abort: false,
        }
    }

    /// Retry after `delay` (if attempts are left).
    pub fn retry_after(message: impl std::fmt::Display, delay: Duration) -> Self {
        TaskError {
            retry_after: Some(delay),
            ..TaskError::retry(message)
        }
    }

    /// Do not retry: the task is dead at once.
    pub fn abort(message: impl std::fmt::Display) -> Self {
        TaskError {
            abort: true,
            ..TaskError::retry(message)
        }
    }

    /// The error text reported to the scheduler.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Any error can end an attempt with `?`; it is retried with the backoff.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::retry(e)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A handler with its payload decoding erased.
pub(crate) type BoxedHandler = Arc<
    dyn Fn(TaskContext, &RawValue) -> BoxFuture<Result<Box<RawValue>, TaskError>> + Send + Sync,
>;

/// An async function that runs one task type: `Fn(TaskContext, P) ->
/// Future<Output = Result<R, TaskError>>` where `R` serializes as the
/// result. Closures and `async fn`s implement it.
pub trait Handler<P>: Send + Sync + 'static {
    /// The handler's output.
    type Output: Serialize;
    /// Runs one attempt.
    fn call(&self, ctx: TaskContext, payload: P) -> BoxFuture<Result<Self::Output, TaskError>>;
}

impl<F, Fut, P, R> Handler<P> for F
where
    F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    R: Serialize,
{
    type Output = R;
    fn call(&self, ctx: TaskContext, payload: P) -> BoxFuture<Result<R, TaskError>> {
        Box::pin(self(ctx, payload))
    }
}

/// Erases the payload and result types of a handler.
pub(crate) fn boxed<H, P>(handler: H) -> BoxedHandler
where
    H: Handler<P>,
    P: DeserializeOwned + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |ctx: TaskContext, raw: &RawValue| {
        let payload = serde_json::from_str::<P>(raw.get());
        let handler = handler.clone();
        Box::pin(async move {
            let payload = payload.map_err(|e| {
                TaskError::abort(format!(
                    "the payload does not decode as this handler expects: {e}"
                ))
            })?;
            let out = handler.call(ctx, payload).await?;
            serde_json::value::to_raw_value(&out)
                .map_err(|e| TaskError::abort(format!("the result does not encode as JSON: {e}")))
        })
    })
}
