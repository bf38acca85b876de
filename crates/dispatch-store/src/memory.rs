//! [`MemoryStore`]: the in-memory test double.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use dispatch_core::{Millis, TaskId, TaskState};

use crate::{
    AttemptRecord, ErrorKind, FireOutcome, InsertOutcome, Lease, Replica, ReplicaRecord,
    RequestDigest, ScheduleRecord, Store, StoreError, TaskQuery, TaskRecord, Write, WriteOutcome,
};

/// A [`Store`] in a `BTreeMap`. Loses everything when dropped: only for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, TaskRecord>,
    keys: HashMap<String, TaskId>,
    schedules: BTreeMap<String, ScheduleRecord>,
    /// `(schedule, fire_at)` to the fire's task.
    fires: BTreeMap<(String, Millis), TaskId>,
    /// Queue name to paused.
    queue_settings: BTreeMap<String, bool>,
    /// Partition to its lease.
    leases: BTreeMap<String, MemoryLease>,
    /// Replica id to its URL and when it last claimed.
    replicas: BTreeMap<String, (String, Millis)>,
    /// The next task id [`Store::reserve_ids`] hands out, at least.
    next_id: u64,
    workers: BTreeMap<dispatch_core::WorkerId, crate::WorkerRecord>,
    /// Queue settings set through the API, by name.
    queue_configs: BTreeMap<String, crate::QueueConfigRecord>,
    /// Ended attempts by task and number.
    attempts: BTreeMap<(TaskId, u32), AttemptRecord>,
}

#[derive(Debug)]
struct MemoryLease {
    holder: String,
    url: String,
    epoch: u64,
    /// On the system clock; 0 once released.
    expires_at: Millis,
}

/// The store's clock: the system's wall clock.
fn clock_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The first record of `records` whose idempotency key is held for a
/// different request, with the holder: by a task `held` knows of, or by an
/// earlier record of the same insert.
fn key_conflict(
    records: &[TaskRecord],
    held: impl Fn(&str) -> Option<(TaskId, Option<RequestDigest>)>,
) -> Option<(usize, TaskId)> {
    let mut own: HashMap<&str, (TaskId, Option<RequestDigest>)> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let Some(k) = r.body.idempotency_key.as_deref() else {
            continue;
        };
        let holder = held(k).or_else(|| own.get(k).copied());
        match holder {
            Some((id, Some(d))) if r.request_digest.is_some_and(|mine| mine != d) => {
                return Some((i, id));
            }
            Some(_) => {}
            None => {
                own.insert(k, (r.id, r.request_digest));
            }
        }
    }
    None
}

impl Inner {
    /// The task holding idempotency key `k`, with its request digest.
    fn key_holder(&self, k: &str) -> Option<(TaskId, Option<RequestDigest>)> {
        let id = *self.keys.get(k)?;
        Some((id, self.tasks.get(&id).and_then(|r| r.request_digest)))
    }

    fn fire(&mut self, schedule: &str, fire_at: Millis, task: &TaskRecord) -> FireOutcome {
        let fire = (schedule.to_owned(), fire_at);
        if let Some(id) = self.fires.get(&fire) {
            return FireOutcome::Existing(*id);
        }
        let Some(s) = self.schedules.get_mut(schedule) else {
            return FireOutcome::UnknownSchedule;
        };
        s.last_fire_at = s.last_fire_at.max(Some(fire_at));
        let existing = task
            .body
            .idempotency_key
            .as_ref()
            .and_then(|k| self.keys.get(k))
            .copied();
        let id = match existing {
            Some(id) => id,
            None => {
                if let Some(k) = &task.body.idempotency_key {
                    self.keys.insert(k.clone(), task.id);
                }
                self.tasks.insert(task.id, task.clone());
                task.id
            }
        };
        self.fires.insert(fire, id);
        match existing {
            Some(id) => FireOutcome::Existing(id),
            None => FireOutcome::Created,
        }
    }
}

impl Store for MemoryStore {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut next = self.lock();
        // Check first, so that a refused batch leaves nothing behind. A record
        // whose idempotency key is already taken (before or earlier in this
        // batch) will not be inserted, so its id cannot conflict: replaying a
        // committed insert answers the original instead of failing.
        let mut new_ids = std::collections::HashSet::new();
        let mut new_keys: HashMap<&str, (TaskId, Option<RequestDigest>)> = HashMap::new();
        let mut new_fires = std::collections::HashSet::new();
        for w in writes {
            if let Write::Fence { partition, epoch } = w
                && next.leases.get(partition).map(|l| l.epoch) != Some(*epoch)
            {
                return Err(StoreError::new(
                    ErrorKind::Fenced,
                    format!("partition {partition} is no longer led at epoch {epoch}"),
                ));
            }
            // A fire recorded before (or earlier in this batch) inserts
            // nothing; any other fire's task is checked like an insert.
            if let Write::Fire {
                schedule,
                fire_at,
                task,
            } = w
            {
                let fire = (schedule.clone(), *fire_at);
                if next.fires.contains_key(&fire) || !new_fires.insert(fire) {
                    continue;
                }
                if let Some(k) = &task.body.idempotency_key {
                    if next.keys.contains_key(k) || new_keys.contains_key(k.as_str()) {
                        continue;
                    }
                    new_keys.insert(k, (task.id, task.request_digest));
                }
                if next.tasks.contains_key(&task.id) || !new_ids.insert(task.id) {
                    return Err(StoreError::new(
                        crate::ErrorKind::Conflict,
                        format!("task {} already stored", task.id),
                    ));
                }
            }
            if let Write::Insert(records) = w {
                // An insert refused for a key held by another request
                // stores nothing, so its ids cannot conflict.
                let held = |k: &str| next.key_holder(k).or_else(|| new_keys.get(k).copied());
                if key_conflict(records, held).is_some() {
                    continue;
                }
                for r in records {
                    if let Some(k) = &r.body.idempotency_key {
                        if next.keys.contains_key(k) || new_keys.contains_key(k.as_str()) {
                            continue;
                        }
                        new_keys.insert(k, (r.id, r.request_digest));
                    }
                    if next.tasks.contains_key(&r.id) || !new_ids.insert(r.id) {
                        return Err(StoreError::new(
                            crate::ErrorKind::Conflict,
                            format!("task {} already stored", r.id),
                        ));
                    }
                }
            }
        }
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            outcomes.push(match w {
                Write::Insert(records) => {
                    if let Some((index, holder)) = key_conflict(records, |k| next.key_holder(k)) {
                        outcomes.push(WriteOutcome::KeyConflict { index, holder });
                        continue;
                    }
                    let mut out = Vec::with_capacity(records.len());
                    for r in records {
                        if let Some(existing) = r
                            .body
                            .idempotency_key
                            .as_ref()
                            .and_then(|k| next.keys.get(k))
                        {
                            out.push(InsertOutcome::Existing(*existing));
                            continue;
                        }
                        if let Some(k) = &r.body.idempotency_key {
                            next.keys.insert(k.clone(), r.id);
                        }
                        next.tasks.insert(r.id, r.clone());
                        out.push(InsertOutcome::Created);
                    }
                    WriteOutcome::Inserted(out)
                }
                Write::Update(u) => match next.tasks.get_mut(&u.id) {
                    Some(r) if r.accepts(u) => {
                        r.apply(u);
                        if let Some(a) = &u.attempt {
                            next.attempts
                                .entry((a.task, a.attempt))
                                .or_insert_with(|| AttemptRecord::clone(a));
                        }
                        WriteOutcome::Updated(true)
                    }
                    _ => WriteOutcome::Updated(false),
                },
                Write::Fence { .. } => WriteOutcome::Fenced,
                Write::PutWorker(w) => {
                    WriteOutcome::WorkerPut(next.workers.insert(w.id, w.clone()).is_some())
                }
                Write::DeleteWorker(id) => {
                    WriteOutcome::WorkerDeleted(next.workers.remove(id).is_some())
                }
                Write::UpsertSchedule(r) => WriteOutcome::ScheduleUpserted(
                    next.schedules.insert(r.name.clone(), r.clone()).is_some(),
                ),
                Write::DeleteSchedule(name) => {
                    next.fires.retain(|(s, _), _| s != name);
                    WriteOutcome::ScheduleDeleted(next.schedules.remove(name).is_some())
                }
                Write::Fire {
                    schedule,
                    fire_at,
                    task,
                } => WriteOutcome::Fired(next.fire(schedule, *fire_at, task)),
                Write::Purge {
                    finished_before,
                    limit,
                } => {
                    let newest = next.tasks.keys().next_back().copied();
                    let doomed: Vec<TaskId> = next
                        .tasks
                        .values()
                        .filter(|r| {
                            r.state.is_terminal()
                                && r.finished_at.is_some_and(|f| f < *finished_before)
                                && Some(r.id) != newest
                        })
                        .map(|r| r.id)
                        .take(*limit)
                        .collect();
                    for id in &doomed {
                        let ended: Vec<(TaskId, u32)> = next
                            .attempts
                            .range((*id, 0)..=(*id, u32::MAX))
                            .map(|(k, _)| *k)
                            .collect();
                        for k in ended {
                            next.attempts.remove(&k);
                        }
                        if let Some(r) = next.tasks.remove(id)
                            && let Some(k) = r.body.idempotency_key
                        {
                            next.keys.remove(&k);
                        }
                    }
                    WriteOutcome::Purged(doomed.len())
                }
                Write::PutQueueConfig(c) => WriteOutcome::QueueConfigPut(
                    next.queue_configs
                        .insert(c.name.clone(), c.clone())
                        .is_some(),
                ),
                Write::SetQueuePaused { name, paused } => {
                    let before = next.queue_settings.insert(name.clone(), *paused);
                    WriteOutcome::QueuePausedSet(before.unwrap_or(false) != *paused)
                }
            });
        }
        Ok(outcomes)
    }

    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self
            .lock()
            .tasks
            .values()
            .rev()
            .filter(|r| r.matches(query))
            .take(query.limit)
            .cloned()
            .collect())
    }

    fn list_attempts(&self, task: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        Ok(self
            .lock()
            .attempts
            .range((task, 0)..=(task, u32::MAX))
            .map(|(_, a)| a.clone())
            .collect())
    }

    fn load_live(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self
            .lock()
            .tasks
            .values()
            .filter(|r| !r.state.is_terminal())
            .cloned()
            .collect())
    }

    fn max_task_id(&self) -> Result<Option<TaskId>, StoreError> {
        Ok(self.lock().tasks.keys().next_back().copied())
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        Ok(self.lock().schedules.get(name).cloned())
    }

    fn list_queue_settings(&self) -> Result<Vec<(String, bool)>, StoreError> {
        Ok(self
            .lock()
            .queue_settings
            .iter()
            .map(|(name, paused)| (name.clone(), *paused))
            .collect())
    }

    fn list_queue_configs(&self) -> Result<Vec<crate::QueueConfigRecord>, StoreError> {
        Ok(self.lock().queue_configs.values().cloned().collect())
    }

    fn count_by_queue_state(&self) -> Result<Vec<(String, TaskState, u64)>, StoreError> {
        let mut counts: BTreeMap<(String, TaskState), u64> = BTreeMap::new();
        for r in self.lock().tasks.values() {
            *counts
                .entry((r.spec.queue.to_string(), r.state))
                .or_default() += 1;
        }
        Ok(counts.into_iter().map(|((q, s), n)| (q, s, n)).collect())
    }

    fn claim_lease(
        &self,
        partition: &str,
        me: &Replica,
        lease_ms: u64,
    ) -> Result<Lease, StoreError> {
        let mut inner = self.lock();
        let now = clock_ms();
        inner.replicas.insert(me.id.clone(), (me.url.clone(), now));
        let lease = inner
            .leases
            .entry(partition.to_owned())
            .or_insert(MemoryLease {
                holder: String::new(),
                url: String::new(),
                epoch: 0,
                expires_at: 0,
            });
        let live = lease.expires_at > now;
        if live && lease.holder != me.id {
            return Ok(Lease {
                epoch: lease.epoch,
                holder: lease.holder.clone(),
                holder_url: lease.url.clone(),
                held: false,
                remaining_ms: lease.expires_at - now,
            });
        }
        if !live {
            lease.epoch += 1;
            lease.holder = me.id.clone();
        }
        lease.url = me.url.clone();
        lease.expires_at = now + lease_ms;
        Ok(Lease {
            epoch: lease.epoch,
            holder: me.id.clone(),
            holder_url: me.url.clone(),
            held: true,
            remaining_ms: lease_ms,
        })
    }

    fn release_lease(&self, partition: &str, me: &Replica, epoch: u64) -> Result<(), StoreError> {
        if let Some(l) = self.lock().leases.get_mut(partition)
            && l.holder == me.id
            && l.epoch == epoch
        {
            l.expires_at = 0;
        }
        Ok(())
    }

    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, StoreError> {
        Ok(self
            .lock()
            .replicas
            .iter()
            .map(|(id, (url, seen))| ReplicaRecord {
                id: id.clone(),
                url: url.clone(),
                last_seen_at: *seen,
            })
            .collect())
    }

    fn load_workers(&self) -> Result<Vec<crate::WorkerRecord>, StoreError> {
        Ok(self.lock().workers.values().cloned().collect())
    }

    fn reserve_ids(&self, n: u64) -> Result<TaskId, StoreError> {
        let mut inner = self.lock();
        let above = inner.tasks.keys().next_back().map_or(1, |id| id.0 + 1);
        let first = inner.next_id.max(above);
        inner.next_id = first + n;
        Ok(TaskId(first))
    }
}

#[cfg(test)]
mod tests {
    crate::store_conformance_tests!(crate::MemoryStore::new());
}
