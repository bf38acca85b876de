//! [`MemoryStore`]: the in-memory test double.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use dispatch_core::TaskId;

use crate::{InsertOutcome, Store, StoreError, TaskQuery, TaskRecord, Write, WriteOutcome};

/// A [`Store`] in a `BTreeMap`. Loses everything when dropped: only for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, TaskRecord>,
    keys: HashMap<String, TaskId>,
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

impl Store for MemoryStore {
    fn apply(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut next = self.lock();
        // Check first, so that a refused batch leaves nothing behind. A record
        // whose idempotency key is already taken (before or earlier in this
        // batch) will not be inserted, so its id cannot conflict: replaying a
        // committed insert answers the original instead of failing.
        let mut new_ids = std::collections::HashSet::new();
        let mut new_keys = std::collections::HashSet::new();
        for w in writes {
            if let Write::Insert(records) = w {
                for r in records {
                    if let Some(k) = &r.body.idempotency_key
                        && (next.keys.contains_key(k) || !new_keys.insert(k.as_str()))
                    {
                        continue;
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
                    Some(r) => {
                        r.apply(u);
                        WriteOutcome::Updated(true)
                    }
                    None => WriteOutcome::Updated(false),
                },
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
}

#[cfg(test)]
mod tests {
    crate::store_conformance_tests!(crate::MemoryStore::new());
}
