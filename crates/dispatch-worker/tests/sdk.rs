//! The SDK against a real scheduler: an in-process server on a loopback
//! port with a SQLite store in a temporary folder, and a `Worker` speaking
//! the HTTP protocol to it. The scenarios are shared with `grpc.rs`, in
//! `common/scenarios.rs`.

mod common;

use std::time::Duration;

use common::scenarios;
use dispatch_worker::Transport;

#[tokio::test]
async fn a_handler_result_is_stored_with_the_task() {
    scenarios::a_handler_result_is_stored_with_the_task(Transport::Http).await;
}

#[tokio::test]
async fn errors_decide_between_retry_and_dead() {
    scenarios::errors_decide_between_retry_and_dead(Transport::Http).await;
}

#[tokio::test]
async fn a_task_past_its_timeout_is_stopped_and_fails_with_timeout() {
    scenarios::a_task_past_its_timeout_is_stopped_and_fails_with_timeout(Transport::Http).await;
}

#[tokio::test]
async fn cancelling_a_running_task_signals_its_handler() {
    // A 900 ms lease: the next heartbeat (every lease/3 = 300 ms) carries
    // the cancellation.
    scenarios::a_cancellation_reaches_the_handler(Transport::Http, 900, Duration::from_secs(3))
        .await;
}

#[tokio::test]
async fn no_more_than_concurrency_tasks_run_at_once() {
    scenarios::no_more_than_concurrency_tasks_run_at_once(Transport::Http, 15).await;
}

#[tokio::test]
async fn shutdown_lets_running_tasks_finish_then_leaves() {
    scenarios::shutdown_lets_running_tasks_finish_then_leaves(Transport::Http).await;
}

#[tokio::test]
async fn the_worker_waits_for_the_scheduler_and_registers_again_after_a_restart() {
    scenarios::the_worker_waits_for_the_scheduler_and_registers_again_after_a_restart(
        Transport::Http,
    )
    .await;
}
