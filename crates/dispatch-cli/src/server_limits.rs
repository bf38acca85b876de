//! The bounds of `dispatch server` on what clients can make it hold:
//! connections, worker registrations, list pages, the audit log.

use std::time::Duration;

use clap::Args;

/// Flags of `dispatch server`, flattened into its arguments.
#[derive(Args, Debug)]
pub(crate) struct ServerLimits {
    /// Most connections open at once; a connection beyond is answered 503
    /// and closed (over TLS: closed). Lowered at start if the open-files
    /// limit, raised to its hard limit, cannot hold them.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Time an HTTP/1.1 client has to send a whole request head (counted
    /// from its first byte, or from the connection's opening), and a small
    /// body after it; beyond, the connection is closed (a slow body: 408).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// Time an HTTP/1.1 keep-alive connection may sit without a request
    /// before it is closed. HTTP/2 (gRPC) connections are kept while their
    /// peer answers pings.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,
    /// Most task types one worker may register (422 on `types` beyond).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_worker_types: u64,
    /// Most labels one worker may register (422 on `labels` beyond).
    #[arg(long, default_value_t = 64)]
    max_worker_labels: u64,
    /// Longest label name or value of a worker, in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_label_bytes: u64,
    /// Most workers registered at once; registrations beyond answer 429.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_workers: u64,
    /// Payload and result bytes one page of `GET /v1/tasks` may carry, in
    /// MiB; a page stops early at it (at least one task) with a
    /// `next_cursor`.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    max_list_mb: u64,
    /// Size of the audit log, in MiB, at which it is rotated to FILE.1
    /// (FILE.1 to FILE.2, and so on; three rotated files are kept).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    audit_log_max_mb: u64,
}

impl ServerLimits {
    /// Sets these bounds on `config`.
    pub(crate) fn apply(&self, config: &mut dispatch_server::ServerConfig) {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        config.max_connections = size(self.max_connections);
        config.header_timeout = Duration::from_millis(self.header_timeout_ms);
        config.idle_timeout = Duration::from_millis(self.idle_timeout_ms);
        config.worker_limits = dispatch_proto::worker::RegistrationLimits {
            max_types: size(self.max_worker_types),
            max_labels: size(self.max_worker_labels),
            max_label_bytes: size(self.max_label_bytes),
        };
        config.max_workers = size(self.max_workers);
        config.max_list_bytes = size(self.max_list_mb.saturating_mul(1 << 20));
        config.audit_log_max_bytes = self.audit_log_max_mb.saturating_mul(1 << 20);
    }
}
