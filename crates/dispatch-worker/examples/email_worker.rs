//! A worker that "sends" emails: run a server (`dispatch server`), then
//! `cargo run -p dispatch-worker --example email_worker`, then
//! `dispatch submit email.send --payload '{"to": "ada@example.com"}' --wait`.
//!
//! It shows the three ways an attempt can end: a result, a retry after a
//! delay, and an abort; and how a handler notices a cancellation.

use std::time::Duration;

use dispatch_worker::{TaskContext, TaskError, Worker};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Email {
    to: String,
    #[serde(default)]
    subject: String,
}

async fn send(ctx: TaskContext, email: Email) -> Result<serde_json::Value, TaskError> {
    if !email.to.contains('@') {
        // Retrying cannot fix a bad address.
        return Err(TaskError::abort(format!(
            "{:?} is not an address",
            email.to
        )));
    }
    if email.to.ends_with("@flaky.example") && ctx.attempt == 1 {
        return Err(TaskError::retry_after(
            "mail server busy",
            Duration::from_secs(2),
        ));
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        _ = ctx.cancelled() => return Err(TaskError::abort("cancelled while sending")),
    }
    Ok(json!({ "to": email.to, "subject": email.subject, "attempt": ctx.attempt }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server =
        std::env::var("DISPATCH_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    Worker::builder(server)
        .name("email-worker")
        .concurrency(16)
        .handle("email.send", send)
        .build()?
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
