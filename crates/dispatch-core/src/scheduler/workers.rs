//! Workers: registration, leases, demand and credit, collection, and
//! removal (a lease that ran out, a leave, a lost stream).

use super::*;

impl<B> Scheduler<B> {
    /// Registers a worker; it can receive tasks at the next `tick`.
    pub fn register_worker(&mut self, spec: WorkerSpec, now: Millis) -> WorkerId {
        let id = loop {
            if let Some(id) = WorkerId::new(self.rng.next_u64())
                && !self.workers.contains_key(&id)
            {
                break id;
            }
        };
        self.insert_worker(id, spec, now);
        id
    }

    /// Registers again, under its own id, a worker a previous scheduler
    /// knew (the store kept it across a takeover): its lease starts now,
    /// so it keeps its tasks if it is alive and loses them after a lease
    /// if it is not. Refused when the id is taken.
    pub fn restore_worker(
        &mut self,
        id: WorkerId,
        spec: WorkerSpec,
        now: Millis,
    ) -> Result<(), CoreError> {
        if self.workers.contains_key(&id) {
            return Err(CoreError::DuplicateWorker(id));
        }
        self.insert_worker(id, spec, now);
        Ok(())
    }

    fn insert_worker(&mut self, id: WorkerId, mut spec: WorkerSpec, now: Millis) {
        spec.types.sort();
        spec.types.dedup();
        for kind in &spec.types {
            let tw = self.by_type.entry(kind.clone()).or_default();
            tw.position.insert(id, tw.workers.len());
            tw.hashed.clear();
            tw.workers
                .push(Candidate::new(id, spec.capacity, spec.weight));
            tw.free += u64::from(spec.capacity);
        }
        self.free_slots += u64::from(spec.capacity);
        self.workers.insert(
            id,
            Worker {
                id,
                spec,
                state: WorkerState::Active,
                registered_at: now,
                last_seen_at: now,
                running: BTreeSet::new(),
                undelivered: Default::default(),
                demand: None,
                stalled: false,
                collect_by: None,
                cancel_notices: Vec::new(),
                handouts: 0,
                completed: 0,
                failed: 0,
            },
        );
        self.lease_check_at = self
            .lease_check_at
            .min(now.saturating_add(self.config.lease_ms));
    }

    /// Renews a worker's lease and returns the running tasks it must stop:
    /// every notice is repeated until the worker reports that task (a
    /// report answered "not leased" counts) or goes, so a lost reply loses
    /// nothing.
    pub fn heartbeat(&mut self, worker: WorkerId, now: Millis) -> Result<Vec<TaskId>, CoreError> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(CoreError::UnknownWorker(worker))?;
        w.last_seen_at = w.last_seen_at.max(now);
        Ok(w.cancel_notices.clone())
    }

    /// The worker reported on `task` (even too late, refused as not
    /// leased): it has heard of any stop notice for it, which is no longer
    /// repeated.
    pub fn stop_heard(&mut self, worker: WorkerId, task: TaskId) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.cancel_notices.retain(|&t| t != task);
        }
    }

    /// Renews a worker's lease and hands over up to `max` of the tasks
    /// assigned to it, oldest assignment first: each becomes `Running`, its
    /// attempt is counted and its clock starts now (a `Running` transition
    /// each).
    pub fn poll(
        &mut self,
        worker: WorkerId,
        max: usize,
        now: Millis,
    ) -> Result<Vec<TaskId>, CoreError> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(CoreError::UnknownWorker(worker))?;
        w.last_seen_at = w.last_seen_at.max(now);
        let n = max.min(w.undelivered.len());
        let handed: Vec<TaskId> = w.undelivered.drain(..n).map(|(t, _)| t).collect();
        // A stop notice is about an earlier attempt: not this one.
        if !w.cancel_notices.is_empty() {
            w.cancel_notices.retain(|t| !handed.contains(t));
        }
        // The answer's number, which a worker that names what it holds
        // sends back once these tasks are in its hands.
        let handout = if handed.is_empty() {
            0
        } else {
            w.handouts = w.handouts.saturating_add(1);
            w.handouts
        };
        if w.stalled {
            // It polls again: it takes tasks again.
            self.change_worker(worker, |w| w.stalled = false);
        }
        for &id in &handed {
            self.collect(id, now);
            if let Some(t) = self.tasks.get_mut(&id) {
                t.handout = handout;
            }
        }
        self.unwatch_if_caught_up(worker);
        Ok(handed)
    }

    /// A worker received every poll answer up to hand-out number `seen`
    /// (see [`Worker::handouts`]) and holds `held` (with the tasks it
    /// reports): a task one of those answers gave it that it does not hold
    /// never reached it (that answer was lost on the way), and goes back to
    /// its queue at once, no attempt counted. Tasks it got otherwise (a
    /// stream, kept across a takeover) and later answers are left alone.
    pub fn reconcile(&mut self, worker: WorkerId, seen: u32, held: &[TaskId], now: Millis) {
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        let lost: Vec<TaskId> = w
            .running
            .iter()
            .copied()
            .filter(|t| {
                self.tasks.get(t).is_some_and(|t| {
                    t.state == TaskState::Running && (1..=seen).contains(&t.handout)
                }) && !held.contains(t)
                    && !self.claim_by.contains_key(t)
            })
            .collect();
        for t in lost {
            self.return_unclaimed(t, now);
        }
    }

    /// Adds to the credit a worker granted (a stream's), up to its
    /// capacity. From its first grant on, a worker is given tasks only
    /// against its credit; `offer(w, 0)` makes it a credit worker with none.
    pub fn offer(&mut self, worker: WorkerId, slots: u32, now: Millis) -> Result<(), CoreError> {
        self.change_worker(worker, |w| {
            w.last_seen_at = w.last_seen_at.max(now);
            let asked = w.demand.unwrap_or(0).saturating_add(slots);
            w.demand = Some(asked.min(w.spec.capacity));
        })
        .ok_or(CoreError::UnknownWorker(worker))
    }

    /// The worker asks for nothing more for now: the tasks assigned to it
    /// that it has not collected go back to their queues, in their old
    /// places, with no attempt counted, and it is given nothing until it
    /// polls again (or, a credit worker, grants credit again). Returns how
    /// many went back.
    pub fn withdraw(&mut self, worker: WorkerId) -> Result<usize, CoreError> {
        let returned = self
            .change_worker(worker, |w| {
                match &mut w.demand {
                    Some(d) => *d = 0,
                    None => w.stalled = true,
                }
                let returned: Vec<TaskId> = w.undelivered.drain(..).map(|(t, _)| t).collect();
                for t in &returned {
                    w.running.remove(t);
                }
                returned
            })
            .ok_or(CoreError::UnknownWorker(worker))?;
        self.unwatch_if_caught_up(worker);
        for &task in &returned {
            self.attempt_ended(task);
            self.put_back(task);
        }
        Ok(returned.len())
    }

    /// A worker leaves gracefully; its tasks go back to the queue without
    /// counting the interrupted attempts.
    pub fn deregister(&mut self, worker: WorkerId, now: Millis) -> Result<(), CoreError> {
        if !self.workers.contains_key(&worker) {
            return Err(CoreError::UnknownWorker(worker));
        }
        self.remove_worker(worker, Interruption::Returned, now);
        Ok(())
    }

    /// Declares a worker dead now, as if its lease had expired: its tasks
    /// are requeued at once and each interrupted attempt counts. For a
    /// transport that sees the worker go (a dropped stream).
    pub fn lose_worker(&mut self, worker: WorkerId, now: Millis) -> Result<(), CoreError> {
        if !self.workers.contains_key(&worker) {
            return Err(CoreError::UnknownWorker(worker));
        }
        self.remove_worker(worker, Interruption::WorkerLost, now);
        self.events.push(Event::WorkerLost { worker, at: now });
        Ok(())
    }

    pub(super) fn renew(&mut self, worker: WorkerId, now: Millis) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen_at = w.last_seen_at.max(now);
        }
    }

    /// Stops watching a worker's collections once it has none pending.
    pub(super) fn unwatch_if_caught_up(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.get_mut(&id)
            && w.undelivered.is_empty()
            && let Some(by) = w.collect_by.take()
        {
            self.collect_checks.remove(&(by, id));
        }
    }

    /// Applies a change to a worker's load or demand, keeping every count
    /// of free slots true; `None` for an unknown worker.
    pub(super) fn change_worker<R>(
        &mut self,
        id: WorkerId,
        change: impl FnOnce(&mut Worker) -> R,
    ) -> Option<R> {
        let w = self.workers.get_mut(&id)?;
        let before = w.free_slots();
        let r = change(w);
        let w = &self.workers[&id];
        self.free_slots = self.free_slots + u64::from(w.free_slots()) - u64::from(before);
        for kind in &w.spec.types {
            if let Some(tw) = self.by_type.get_mut(kind) {
                tw.sync(w, before);
            }
        }
        Some(r)
    }

    /// A worker collects a task assigned to it: the attempt starts now.
    pub(super) fn collect(&mut self, id: TaskId, now: Millis) {
        let t = self.tasks.get_mut(&id).expect("an assigned task is live");
        if let Some(q) = self.queues.get_mut(&t.spec.queue) {
            q.collected += 1;
        }
        t.state = TaskState::Running;
        t.attempts += 1;
        t.started_at = Some(now);
        t.last_error = None;
        // The attempt's clock starts when the worker has the task in hand.
        if let Some(at) = t.deadline() {
            self.deadlines.insert((at, id));
        }
        self.emit(id, None);
    }

    pub(super) fn expire_leases(&mut self, now: Millis) {
        if now < self.lease_check_at {
            return;
        }
        let lease = self.config.lease_ms;
        let lapsed: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| w.last_seen_at.saturating_add(lease) <= now)
            .map(|w| w.id)
            .collect();
        // Out of routing all at once: a fleet expiring together costs one
        // pass over each type, not one per worker.
        self.detach(&lapsed);
        for id in lapsed {
            self.drop_worker(id, Interruption::WorkerLost, now);
            self.events.push(Event::WorkerLost {
                worker: id,
                at: now,
            });
        }
        self.lease_check_at = self
            .workers
            .values()
            .map(|w| w.last_seen_at.saturating_add(lease))
            .min()
            .unwrap_or(Millis::MAX);
    }

    /// Takes back what workers without credit left uncollected past
    /// `Config::collect_ms` (see there).
    pub(super) fn expire_uncollected(&mut self, now: Millis) {
        let collect_ms = self.config.collect_ms;
        while let Some(&(at, id)) = self.collect_checks.first() {
            if at > now {
                break;
            }
            self.collect_checks.remove(&(at, id));
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.collect_by != Some(at) {
                continue;
            }
            w.collect_by = None;
            let Some(&(_, oldest)) = w.undelivered.front() else {
                continue;
            };
            let by = oldest.saturating_add(collect_ms);
            if by > now {
                // It collected the older ones: watch the oldest left.
                w.collect_by = Some(by);
                self.collect_checks.insert((by, id));
                continue;
            }
            let n = self.withdraw(id).unwrap_or(0);
            self.events.push(Event::Uncollected {
                worker: id,
                tasks: n,
                at: now,
            });
        }
    }

    pub(super) fn remove_worker(&mut self, id: WorkerId, why: Interruption, now: Millis) {
        self.detach(&[id]);
        self.drop_worker(id, why, now);
    }

    /// Takes workers out of routing (and their free slots out of the
    /// counts), in one pass over each type they run however many go.
    pub(super) fn detach(&mut self, ids: &[WorkerId]) {
        let mut kinds: Vec<Arc<str>> = Vec::new();
        for id in ids {
            let Some(w) = self.workers.get(id) else {
                continue;
            };
            let free = u64::from(w.free_slots());
            self.free_slots -= free;
            for kind in &w.spec.types {
                if let Some(tw) = self.by_type.get_mut(kind) {
                    tw.free -= free;
                }
                kinds.push(kind.clone());
            }
        }
        kinds.sort();
        kinds.dedup();
        let gone: std::collections::HashSet<WorkerId> = ids.iter().copied().collect();
        for kind in kinds {
            let Some(tw) = self.by_type.get_mut(&kind) else {
                continue;
            };
            tw.workers.retain(|c| !gone.contains(&c.id));
            tw.hashed.clear();
            tw.position = tw
                .workers
                .iter()
                .enumerate()
                .map(|(i, c)| (c.id, i))
                .collect();
            if tw.workers.is_empty() {
                self.by_type.remove(&kind);
            }
        }
    }

    /// Forgets a worker already detached from routing, and requeues what it
    /// held.
    pub(super) fn drop_worker(&mut self, id: WorkerId, why: Interruption, now: Millis) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        for task in w.running {
            self.clear_deadline(task);
            self.attempt_ended(task);
            let t = self.tasks.get_mut(&task).expect("running task is live");
            if t.state != TaskState::Running {
                // Assigned, never collected: nothing ran, nothing counts.
                self.put_back(task);
                continue;
            }
            self.uncollect(task);
            let t = self.tasks.get_mut(&task).expect("running task is live");
            match why {
                Interruption::Returned => {
                    t.attempts = t.attempts.saturating_sub(1);
                    self.make_queued(task, now);
                    self.emit(task, None);
                }
                Interruption::WorkerLost => {
                    let error = format!("worker {id} lost");
                    let retried = t.attempts < t.spec.max_attempts;
                    self.end_attempt_as(task, AttemptOutcome::Lost, now);
                    if let Some((_, end)) = &mut self.ending {
                        // The worker is gone from the table already.
                        end.worker_name = w.spec.name.clone();
                        // A lost attempt is retried at once.
                        end.retry_delay_ms = (retried).then_some(0);
                    }
                    let t = self.tasks.get_mut(&task).expect("running task is live");
                    if t.attempts >= t.spec.max_attempts {
                        self.finish(task, TaskState::Dead, Some(error), now);
                    } else {
                        self.retry(task, error, now, now);
                    }
                }
            }
        }
        // Tasks only this worker could run can never run now.
        for task in self.pinned.remove(&id).unwrap_or_default() {
            if let Some(t) = self.tasks.get(&task)
                && t.worker.is_none()
            {
                self.unindex(task);
                self.finish(
                    task,
                    TaskState::Dead,
                    Some(format!("worker {id} is gone")),
                    now,
                );
            }
        }
    }
}

/// Tells a worker to stop a task it collected, once: notices wait until the
/// worker reports the task, and a worker holds at most its capacity, so
/// older notices than twice that are about tasks it stopped long ago.
pub(super) fn notify_stop(w: &mut Worker, task: TaskId) {
    if w.cancel_notices.contains(&task) {
        return;
    }
    let keep = 2 * w.spec.capacity.max(1) as usize;
    if w.cancel_notices.len() >= keep {
        w.cancel_notices.remove(0);
    }
    w.cancel_notices.push(task);
}
