//! The schedules in memory: [`Schedules`], one [`Entry`] per schedule with
//! up to when its fires were decided, loaded from the store at start-up.
//! The loop and the endpoints in `schedules` change them; this module knows
//! nothing of the app.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use dispatch_core::Millis;
use dispatch_cron::MisfirePolicy;
use dispatch_proto::{ScheduleJson, ScheduleParts};
use dispatch_store::ScheduleRecord;
use tokio::sync::Notify;

use crate::wire::{schedule_json, schedule_parts};

/// How late the latest due fire may run and still count as on time.
pub(crate) const MISFIRE_GRACE_MS: Millis = 60_000;

/// One schedule in memory.
pub(super) struct Entry {
    pub(super) record: ScheduleRecord,
    /// `None` when the stored schedule no longer validates: it is listed
    /// but never fires.
    pub(super) parts: Option<ScheduleParts>,
    /// Every fire at or before this was run or dropped.
    pub(super) decided: Millis,
    /// The next fire after `decided`.
    pub(super) next: Option<Millis>,
    /// Created but not yet committed: holds the name, invisible otherwise.
    pub(super) pending: bool,
    /// What it takes of `--max-memory-mb` (its template twice over: as
    /// text and parsed), given back when it is deleted.
    _charge: Option<crate::budget::Charge>,
}

impl Entry {
    pub(super) fn new(
        record: ScheduleRecord,
        parts: Option<ScheduleParts>,
        pending: bool,
        charge: Option<crate::budget::Charge>,
    ) -> Entry {
        let decided = record.last_fire_at.unwrap_or(record.created_at);
        let next = parts.as_ref().and_then(|p| p.cron.next_after(decided));
        Entry {
            record,
            parts,
            decided,
            next,
            pending,
            _charge: charge,
        }
    }

    pub(super) fn json(&self) -> ScheduleJson {
        let next = if self.record.paused { None } else { self.next };
        schedule_json(&self.record, next)
    }

    pub(super) fn policy(&self, parts: &ScheduleParts) -> MisfirePolicy {
        MisfirePolicy {
            misfire: parts.misfire,
            catch_up_limit: self.record.catch_up_limit as usize,
            grace_ms: MISFIRE_GRACE_MS,
        }
    }
}

/// Every schedule, by name, and the loop's wake-up.
#[derive(Default)]
pub(crate) struct Schedules {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Notified when a schedule was added or removed.
    pub(super) changed: Notify,
}

impl Schedules {
    pub(super) fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Entries are replaced whole; any state a panic left is consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every committed schedule, by name, as the API shows it.
    pub(crate) fn shown(&self) -> Vec<ScheduleJson> {
        self.lock()
            .values()
            .filter(|e| !e.pending)
            .map(Entry::json)
            .collect()
    }

    /// Takes the stored schedules at start-up; they are charged to
    /// `budget` whatever it says, like recovered tasks.
    pub(crate) fn load(
        &self,
        records: Vec<ScheduleRecord>,
        budget: &std::sync::Arc<crate::budget::MemoryBudget>,
    ) {
        let mut entries = self.lock();
        for r in records {
            let parts = match schedule_parts(&r) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(schedule = %r.name, error = %e, "a stored schedule does not validate; it will not fire");
                    None
                }
            };
            let charge = budget.charge(schedule_footprint(&r));
            entries.insert(r.name.clone(), Entry::new(r, parts, false, Some(charge)));
        }
        tracing::info!(schedules = entries.len(), "loaded cron schedules");
        drop(entries);
        self.changed.notify_one();
    }

    /// The earliest next fire of an active schedule.
    pub(super) fn earliest(&self) -> Option<Millis> {
        self.lock()
            .values()
            .filter(|e| !e.pending && !e.record.paused)
            .filter_map(|e| e.next)
            .min()
    }

    /// Records a committed fire.
    pub(super) fn fired(&self, schedule: &str, fire_at: Millis) {
        if let Some(e) = self.lock().get_mut(schedule) {
            e.record.last_fire_at = e.record.last_fire_at.max(Some(fire_at));
        }
    }

    /// Makes a fire the store refused due again.
    pub(super) fn retry(&self, schedule: &str, fire_at: Millis) {
        if let Some(e) = self.lock().get_mut(schedule) {
            rewind(e, fire_at);
        }
    }
}

/// Undecides `fire_at` and everything after it.
pub(super) fn rewind(e: &mut Entry, fire_at: Millis) {
    e.decided = e.decided.min(fire_at.saturating_sub(1));
    e.next = Some(e.next.map_or(fire_at, |n| n.min(fire_at)));
}

/// What a schedule is charged: its strings, its template twice over (kept
/// as text and parsed) and a fixed share for its entry.
pub(super) fn schedule_footprint(r: &ScheduleRecord) -> u64 {
    let strings = r.name.len() + r.cron.len() + r.timezone.len() + r.misfire.len();
    (1_024 + strings + 2 * r.task.len()) as u64
}
