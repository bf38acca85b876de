//! The generic worker (`dispatch worker --config worker.toml`): a worker
//! that needs no code.
//!
//! The config file maps each task type to a shell command or an HTTP
//! endpoint; this module parses it ([`load`], in `config`), turns each
//! entry into a handler of the SDK ([`Command`], run by `command`, or
//! [`Endpoint`], called by `http`) and runs one [`crate::Worker`] with them
//! until the shutdown future resolves ([`run`], in `run`; the CLI passes
//! [`shutdown_signal`]: Ctrl-C or SIGTERM). The SDK does the protocol:
//! registration, leases, timeouts, cancellation, retries and the graceful
//! drain. [`section`] is the TOML helper every error goes through, shared
//! with the server's config file.
//!
//! ```toml
//! server = "http://127.0.0.1:7070"   # --server / DISPATCH_SERVER win
//! name = "media-1"
//! concurrency = 4
//! labels = { zone = "eu" }
//!
//! [types."image.resize"]
//! command = ["sh", "scripts/resize.sh"]   # argv; no shell unless you ask
//! env = { QUALITY = "80" }
//! cwd = "."                               # relative to this file's folder
//! timeout_ms = 60000                      # a local cap
//!
//! [types."email.send"]
//! url = "http://127.0.0.1:8080/hooks/email"
//! method = "POST"
//! headers = { Authorization = "Bearer abc" }
//! ```
//!
//! **A command** gets the payload as JSON on stdin and `DISPATCH_TASK_ID`,
//! `DISPATCH_TASK_TYPE`, `DISPATCH_ATTEMPT` in its environment. Exit 0:
//! success, stdout is the result (JSON when it parses, else a string).
//! Exit [`EXIT_ABORT`] (100): failure without retry. Any other exit:
//! failure, retried with the task's backoff; the error is
//! `exit status N: <last lines of stderr>`. The command runs in a process
//! group of its own, killed whole on timeout, cancellation or shutdown of
//! the attempt, so nothing it started is left behind.
//!
//! **An endpoint** gets the payload as the JSON body with the headers
//! `X-Dispatch-Task-Id`, `X-Dispatch-Task-Type` and `X-Dispatch-Attempt`.
//! 2xx: success, the body is the result. 4xx other than 408 and 429:
//! failure without retry. Anything else, and network errors: retried
//! (after `Retry-After` seconds when the answer has that header). An
//! `https://` endpoint, like an `https://` scheduler, must present a
//! certificate that the system's CAs or `--ca` vouch for.

mod command;
mod config;
mod http;
mod output;
mod run;
pub mod section;

pub use command::EXIT_ABORT;
pub use config::{Action, Command, Config, Endpoint, TypeConfig, load, parse};
pub use run::{DEFAULT_SERVER, run, shutdown_signal, worker};
pub use section::ConfigError;
