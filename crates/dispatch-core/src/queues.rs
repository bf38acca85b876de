//! Queues and limits: pause, weighted fairness, concurrency and rate limits.
//!
//! Every task belongs to a named queue. Queues share the workers by weight
//! with stride scheduling: each queue has a `pass`; the next task comes from
//! the eligible queue with the smallest pass, which then advances by
//! `STRIDE / weight`. Under saturation a queue of weight 3 gets three tasks
//! for every one of a weight-1 queue; an idle queue that wakes up starts at
//! the current pass, so it cannot claim a burst for the time it slept.
//!
//! A [`Limiter`] caps a queue or a task type: at most `max_running` attempts
//! at once and, with a rate, a token bucket refilled continuously (`burst`
//! tokens at most). Per-key concurrency caps the running tasks of one
//! `routing_key` within a queue.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::Millis;

/// One step of stride scheduling for a weight-1 queue.
pub(crate) const STRIDE: u64 = 1 << 20;

/// Settings of a queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    /// Share of the workers under saturation, relative to other queues
    /// (>= 1, default 1).
    pub weight: u32,
    /// Most attempts of this queue running at once.
    pub max_running: Option<u32>,
    /// Most attempts started per second (token bucket).
    pub rate_per_sec: Option<f64>,
    /// Tokens the bucket holds at most (default: one second's worth, at
    /// least 1).
    pub burst: Option<u32>,
    /// Most attempts running at once for one `routing_key` in this queue.
    pub max_per_key: Option<u32>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            weight: 1,
            max_running: None,
            rate_per_sec: None,
            burst: None,
            max_per_key: None,
        }
    }
}

/// Settings of a task type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeConfig {
    /// Most attempts of this type running at once.
    pub max_running: Option<u32>,
    /// Most attempts started per second (token bucket).
    pub rate_per_sec: Option<f64>,
    /// Tokens the bucket holds at most.
    pub burst: Option<u32>,
}

/// A concurrency cap and a token bucket.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limiter {
    pub(crate) max_running: Option<u32>,
    /// Tokens per millisecond, and the bucket size.
    rate: Option<(f64, f64)>,
    pub(crate) running: u32,
    tokens: f64,
    at: Millis,
}

impl Limiter {
    pub(crate) fn new(
        max_running: Option<u32>,
        rate_per_sec: Option<f64>,
        burst: Option<u32>,
    ) -> Self {
        let rate = rate_per_sec.filter(|r| *r > 0.0).map(|r| {
            let burst = burst.map_or(r.max(1.0), f64::from).max(1.0);
            (r / 1000.0, burst)
        });
        Limiter {
            max_running,
            rate,
            running: 0,
            tokens: rate.map_or(0.0, |(_, b)| b),
            at: 0,
        }
    }

    /// Keeps the running count, resets the bucket to the new settings.
    pub(crate) fn reconfigure(&mut self, other: Limiter) {
        let running = self.running;
        *self = other;
        self.running = running;
    }

    pub(crate) fn refill(&mut self, now: Millis) {
        if let Some((per_ms, burst)) = self.rate {
            if now > self.at {
                self.tokens = (self.tokens + (now - self.at) as f64 * per_ms).min(burst);
            }
            self.at = self.at.max(now);
        }
    }

    /// True when one more attempt may start now.
    pub(crate) fn allows(&self) -> bool {
        self.max_running.is_none_or(|m| self.running < m)
            && self.rate.is_none_or(|_| self.tokens >= 1.0)
    }

    pub(crate) fn start(&mut self) {
        self.running += 1;
        if self.rate.is_some() {
            self.tokens -= 1.0;
        }
    }

    pub(crate) fn end(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Checks the bucket: an attempt starts only on a whole token, so the
    /// bucket never goes below empty, nor above its size.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some((_, burst)) = self.rate
            && !(-1e-9..=burst + 1e-9).contains(&self.tokens)
        {
            return Err(format!(
                "rate limit bucket holds {} tokens of {burst}",
                self.tokens
            ));
        }
        Ok(())
    }

    /// When the bucket next holds a whole token, if it is short of one.
    pub(crate) fn next_token_at(&self) -> Option<Millis> {
        let (per_ms, _) = self.rate?;
        (self.tokens < 1.0).then(|| self.at + ((1.0 - self.tokens) / per_ms).ceil() as Millis)
    }
}

/// A queue's state in the scheduler.
#[derive(Clone, Debug)]
pub(crate) struct QueueState {
    pub(crate) config: QueueConfig,
    pub(crate) paused: bool,
    pub(crate) limiter: Limiter,
    /// Stride scheduling position.
    pub(crate) pass: u64,
    /// Queued tasks in this queue.
    pub(crate) ready: usize,
    /// Live tasks of this queue, whatever their state.
    pub(crate) live: usize,
    /// Tasks of this queue that a worker collected (`Running`).
    pub(crate) collected: usize,
    /// Running attempts per routing key (only with `max_per_key`).
    pub(crate) by_key: HashMap<Arc<str>, u32>,
}

impl QueueState {
    pub(crate) fn new(config: QueueConfig) -> Self {
        let limiter = Limiter::new(config.max_running, config.rate_per_sec, config.burst);
        QueueState {
            config,
            paused: false,
            limiter,
            pass: 0,
            ready: 0,
            live: 0,
            collected: 0,
            by_key: HashMap::new(),
        }
    }

    /// Live tasks by state: (scheduled, queued, running). A task assigned
    /// to a worker and not collected is queued.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let assigned = (self.limiter.running as usize).saturating_sub(self.collected);
        let queued = self.ready + assigned;
        let scheduled = self.live.saturating_sub(queued + self.collected);
        (scheduled, queued, self.collected)
    }

    /// True when nothing distinguishes the queue from one never named: no
    /// live task, default settings, not paused. Such a queue is forgotten,
    /// so that names used once do not accumulate.
    pub(crate) fn is_idle(&self) -> bool {
        self.live == 0
            && self.ready == 0
            && self.limiter.running == 0
            && !self.paused
            && self.by_key.is_empty()
            && self.config == QueueConfig::default()
    }

    pub(crate) fn stride(&self) -> u64 {
        STRIDE / u64::from(self.config.weight.max(1))
    }

    /// True when a task of this queue may start now, as far as pause and
    /// the queue's limits go.
    pub(crate) fn may_start(&self) -> bool {
        !self.paused && self.limiter.allows()
    }

    /// True when a task with `key` may start under the per-key cap.
    pub(crate) fn key_allows(&self, key: Option<&Arc<str>>) -> bool {
        match (self.config.max_per_key, key) {
            (Some(max), Some(k)) => self.by_key.get(k).copied().unwrap_or(0) < max,
            _ => true,
        }
    }
}

/// A queue as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueInfo {
    /// Its name.
    pub name: Arc<str>,
    /// Whether dispatch from it is paused.
    pub paused: bool,
    /// Its settings.
    pub config: QueueConfig,
    /// Live tasks by state: scheduled, queued, running.
    pub scheduled: usize,
    /// Tasks ready to run.
    pub queued: usize,
    /// Attempts running.
    pub running: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut l = Limiter::new(None, Some(10.0), Some(2));
        l.refill(0);
        assert!(l.allows());
        l.start();
        l.start();
        assert!(!l.allows(), "burst of 2 spent");
        assert_eq!(l.next_token_at(), Some(100));
        l.refill(99);
        assert!(!l.allows());
        l.refill(100);
        assert!(l.allows());
        l.refill(10_000);
        l.start();
        l.start();
        assert!(!l.allows(), "never more than the burst");
    }

    #[test]
    fn a_concurrency_cap_counts_running_attempts() {
        let mut l = Limiter::new(Some(1), None, None);
        assert!(l.allows());
        l.start();
        assert!(!l.allows());
        l.end();
        assert!(l.allows());
    }
}
