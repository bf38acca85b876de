//! The table of live tasks, by id.
//!
//! A `HashMap<TaskId, Box<Task>>` stores each id twice (in the slot and in
//! the task) and, at a million tasks, has two million slots of 17 bytes.
//! This table keeps only the box and its control byte per slot, and finds a
//! task by hashing the id the task itself holds: 9 bytes a slot.

use std::hash::BuildHasher;
use std::ops::Index;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::TaskId;
use crate::task::Task;

/// Live tasks, by id.
#[derive(Debug)]
pub(crate) struct TaskTable<B> {
    table: HashTable<Box<Task<B>>>,
    hasher: RandomState,
}

impl<B> TaskTable<B> {
    pub(crate) fn new() -> Self {
        TaskTable {
            table: HashTable::new(),
            hasher: RandomState::default(),
        }
    }

    fn hash(&self, id: TaskId) -> u64 {
        self.hasher.hash_one(id)
    }

    pub(crate) fn get(&self, id: &TaskId) -> Option<&Task<B>> {
        self.table
            .find(self.hash(*id), |t| t.id == *id)
            .map(|t| &**t)
    }

    pub(crate) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task<B>> {
        let hash = self.hash(*id);
        self.table.find_mut(hash, |t| t.id == *id).map(|t| &mut **t)
    }

    pub(crate) fn contains_key(&self, id: &TaskId) -> bool {
        self.get(id).is_some()
    }

    /// Adds a task whose id is not in the table yet.
    pub(crate) fn insert(&mut self, task: Box<Task<B>>) {
        let hash = self.hash(task.id);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, task, |t| hasher.hash_one(t.id));
    }

    pub(crate) fn remove(&mut self, id: &TaskId) -> Option<Box<Task<B>>> {
        let hash = self.hash(*id);
        self.table
            .find_entry(hash, |t| t.id == *id)
            .ok()
            .map(|e| e.remove().0)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Task<B>> {
        self.table.iter().map(|t| &**t)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

impl<B> Index<&TaskId> for TaskTable<B> {
    type Output = Task<B>;

    fn index(&self, id: &TaskId) -> &Task<B> {
        self.get(id).expect("the task is in the table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskSpec;

    fn task(id: u64) -> Box<Task<()>> {
        Box::new(Task {
            id: TaskId(id),
            spec: TaskSpec::new("t"),
            body: (),
            state: crate::TaskState::Queued,
            attempts: 0,
            worker: None,
            started_at: None,
            ready_at: None,
            last_error: None,
            waiting_on: 0,
            seq: id,
            handout: 0,
            rank: 0,
        })
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let mut table = TaskTable::new();
        for id in 0..1_000 {
            table.insert(task(id));
        }
        assert_eq!(table.len(), 1_000);
        assert!(table.contains_key(&TaskId(999)));
        assert!(!table.contains_key(&TaskId(1_000)));
        assert_eq!(table[&TaskId(7)].id, TaskId(7));
        table.get_mut(&TaskId(7)).expect("held").attempts = 2;
        assert_eq!(table.get(&TaskId(7)).map(|t| t.attempts), Some(2));
        assert_eq!(table.remove(&TaskId(7)).map(|t| t.id), Some(TaskId(7)));
        assert!(table.remove(&TaskId(7)).is_none());
        assert_eq!(table.len(), 999);
        let mut ids: Vec<u64> = table.values().map(|t| t.id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..1_000).filter(|&i| i != 7).collect::<Vec<_>>());
    }
}
