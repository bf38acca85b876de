//! The memory budget of live tasks (`--max-memory-mb`).
//!
//! Every live task is charged an estimate of what it costs the server in
//! memory: its payload and strings plus a fixed share for the core's
//! structures ([`footprint`]). A submission reserves its tasks' charge
//! before its insert is sent, so submissions racing each other cannot
//! overshoot the bound together; past it they answer 429. The charge then
//! travels with the task's [`Body`] inside the core and is released when
//! the core lets the task go, whatever ended it.
//!
//! A reservation also counts its tasks as *pending* until they enter the
//! core, so that `--max-live-tasks` sees submissions still on their way to
//! the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dispatch_store::{TaskBody, TaskRecord};

/// Bytes charged per live task beyond its payload and strings: the core's
/// task entry, its place in a lane, its timers, the id maps, the body's
/// allocation and the allocator's slack. Measured with `bench/chaos/run
/// flood`: 1M queued tasks without payloads took 388 MiB of server RSS, 15
/// of them before the first task: 391 bytes a task, so this charge keeps a
/// margin.
pub(crate) const TASK_OVERHEAD: u64 = 512;

/// What a registered worker is charged: its registration's strings and
/// a fixed share for the scheduler's and the server's structures (its
/// routing entry per type, its wake-up handle, its owner).
pub(crate) fn worker_footprint(spec: &dispatch_core::WorkerSpec) -> u64 {
    let types: usize = spec.types.iter().map(|t| t.len() + 64).sum();
    let labels: usize = spec
        .labels
        .iter()
        .map(|(k, v)| k.len() + v.len() + 48)
        .sum();
    WORKER_OVERHEAD + (spec.name.len() + types + labels) as u64
}

/// The fixed part of a worker's charge, in bytes.
const WORKER_OVERHEAD: u64 = 2_048;

/// What a task is charged.
pub(crate) fn footprint(r: &TaskRecord) -> u64 {
    let (spec, body) = (&r.spec, &r.body);
    let labels: usize = spec
        .labels
        .iter()
        .map(|(k, v)| k.len() + v.len() + 48)
        .sum();
    let strings = body.payload.len()
        + body.idempotency_key.as_ref().map_or(0, String::len)
        + body.depends_on.len() * 8
        + spec.kind.len()
        + spec.queue.len()
        + spec.routing_key.as_ref().map_or(0, |k| k.len())
        + labels;
    TASK_OVERHEAD + strings as u64
}

/// Bytes in use against a limit.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
    pending: AtomicU64,
}

/// A submission that does not fit.
#[derive(Debug)]
pub(crate) struct OverBudget {
    pub(crate) used: u64,
    pub(crate) limit: u64,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "live tasks take about {} MiB of the server's {} MiB (--max-memory-mb); try again later",
            self.used >> 20,
            self.limit >> 20
        )
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            used: AtomicU64::new(0),
            limit,
            pending: AtomicU64::new(0),
        })
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Tasks reserved for but not yet in the core.
    pub(crate) fn pending_tasks(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for `tasks` new tasks if the bytes fit.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: u64, tasks: u64) -> Result<Charge, OverBudget> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let after = used.saturating_add(bytes);
            if after > self.limit {
                return Err(OverBudget {
                    used,
                    limit: self.limit,
                });
            }
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.pending.fetch_add(tasks, Ordering::Relaxed);
                    return Ok(Charge {
                        bytes,
                        tasks,
                        budget: self.clone(),
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// Charges `bytes` whether they fit or not: for tasks the server must
    /// hold anyway (recovered at start, requeued from dead).
    pub(crate) fn charge(self: &Arc<Self>, bytes: u64) -> Charge {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Charge {
            bytes,
            tasks: 0,
            budget: self.clone(),
        }
    }
}

/// Bytes held against a budget until dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    bytes: u64,
    /// Pending tasks this reservation still counts.
    tasks: u64,
    budget: Arc<MemoryBudget>,
}

impl Charge {
    /// Moves `bytes` of this charge into a new one for a task entering the
    /// core (charging what this one lacks), and stops counting that task as
    /// pending.
    pub(crate) fn split_off(&mut self, bytes: u64) -> Charge {
        if self.tasks > 0 {
            self.tasks -= 1;
            self.budget.pending.fetch_sub(1, Ordering::Relaxed);
        }
        let moved = bytes.min(self.bytes);
        self.bytes -= moved;
        let mut part = self.budget.charge(bytes - moved);
        part.bytes = bytes;
        part
    }
}

impl Charge {
    /// Takes over `other`'s bytes.
    pub(crate) fn absorb(&mut self, mut other: Charge) {
        self.bytes += std::mem::take(&mut other.bytes);
        self.tasks += std::mem::take(&mut other.tasks);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.pending.fetch_sub(self.tasks, Ordering::Relaxed);
    }
}

/// The bytes one live task holds against the budget: a [`Charge`] without
/// its pending count, so that each of a million tasks carries 16 bytes.
#[derive(Debug)]
struct Held {
    bytes: u64,
    budget: Arc<MemoryBudget>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A live task's body as the core holds it, inside the core's task entry,
/// with its charge, which goes when the body does.
///
/// Only what every task has is held inline (the payload, shared with the
/// record it came from, and the creation time); what few tasks have
/// (an idempotency key, parents, a shard) sits behind one pointer, so that
/// a million plain tasks do not carry a million empty strings and vectors.
#[derive(Debug)]
pub(crate) struct Body {
    payload: Arc<str>,
    created_at: dispatch_core::Millis,
    rare: Option<Box<Rare>>,
    /// Kept for its drop, which gives the charge back.
    _held: Held,
}

/// The parts of a body that most tasks leave empty.
#[derive(Debug)]
struct Rare {
    idempotency_key: Option<String>,
    depends_on: Vec<dispatch_core::TaskId>,
    shard: Option<(u32, u32)>,
}

impl Body {
    /// `body`, holding `charge`'s bytes; a task it still counted as
    /// pending is in the core now.
    pub(crate) fn new(body: TaskBody, mut charge: Charge) -> Self {
        let budget = &charge.budget;
        budget
            .pending
            .fetch_sub(std::mem::take(&mut charge.tasks), Ordering::Relaxed);
        let held = Held {
            bytes: std::mem::take(&mut charge.bytes),
            budget: budget.clone(),
        };
        let TaskBody {
            payload,
            idempotency_key,
            depends_on,
            created_at,
            shard,
        } = body;
        let plain = idempotency_key.is_none() && depends_on.is_empty() && shard.is_none();
        let rare = (!plain).then(|| {
            Box::new(Rare {
                idempotency_key,
                depends_on,
                shard,
            })
        });
        Body {
            payload,
            created_at,
            rare,
            _held: held,
        }
    }

    /// The payload, as JSON text.
    pub(crate) fn payload(&self) -> &Arc<str> {
        &self.payload
    }

    /// `(index, total)` of a `sharding` shard.
    pub(crate) fn shard(&self) -> Option<(u32, u32)> {
        self.rare.as_ref().and_then(|r| r.shard)
    }

    /// The body as the store keeps it.
    pub(crate) fn to_task_body(&self) -> TaskBody {
        let rare = self.rare.as_deref();
        TaskBody {
            payload: self.payload.clone(),
            idempotency_key: rare.and_then(|r| r.idempotency_key.clone()),
            depends_on: rare.map(|r| r.depends_on.clone()).unwrap_or_default(),
            created_at: self.created_at,
            shard: rare.and_then(|r| r.shard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_come_back_when_dropped() {
        let budget = MemoryBudget::new(1_000);
        let a = budget.reserve(600, 2).expect("fits");
        let refused = budget.reserve(500, 1).expect_err("over");
        assert_eq!((refused.used, refused.limit), (600, 1_000));
        let b = budget.reserve(400, 1).expect("fits exactly");
        assert_eq!(budget.used(), 1_000);
        assert_eq!(budget.pending_tasks(), 3);
        drop(a);
        assert_eq!((budget.used(), budget.pending_tasks()), (400, 1));
        drop(b);
        assert_eq!((budget.used(), budget.pending_tasks()), (0, 0));
    }

    #[test]
    fn split_charges_move_bytes_without_counting_them_twice() {
        let budget = MemoryBudget::new(1_000);
        let mut batch = budget.reserve(300, 2).expect("fits");
        let one = batch.split_off(200);
        assert_eq!(budget.used(), 300);
        assert_eq!(budget.pending_tasks(), 1, "one task is in the core");
        // Asking for more than is left charges the difference.
        let two = batch.split_off(150);
        assert_eq!(budget.used(), 350);
        assert_eq!(budget.pending_tasks(), 0);
        drop(batch);
        assert_eq!(budget.used(), 350);
        let body = Body::new(
            dispatch_store::conformance::sample(1, "t").body,
            budget.charge(50),
        );
        drop((one, two));
        assert_eq!(budget.used(), 50, "the body still holds its charge");
        drop(body);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_body_gives_back_what_it_was_made_of() {
        let budget = MemoryBudget::new(1_000);
        let plain = dispatch_store::conformance::sample(1, "t").body;
        let mut rare = plain.clone();
        rare.idempotency_key = Some("k".to_owned());
        rare.depends_on = vec![dispatch_core::TaskId(7)];
        rare.shard = Some((2, 5));
        for body in [plain, rare] {
            let held = Body::new(body.clone(), budget.charge(1));
            assert_eq!(held.to_task_body(), body);
            assert_eq!(held.shard(), body.shard);
            assert_eq!(held.payload(), &body.payload);
        }
    }
}
