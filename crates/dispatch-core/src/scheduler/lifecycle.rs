//! A task's life: its ready lanes and timers, attempts that end, retries,
//! terminal states and the dependents they settle, and the events each
//! change emits.

use super::*;

impl<B> Scheduler<B> {
    pub(super) fn check_lease(&self, task: TaskId, worker: WorkerId) -> Result<(), CoreError> {
        match self.tasks.get(&task) {
            Some(t) if t.state == TaskState::Running && t.worker == Some(worker) => Ok(()),
            _ => Err(CoreError::NotLeased { task, worker }),
        }
    }

    /// Notes that the collected attempt of `task` ends now, and how; the
    /// next transition of the task carries it ([`Transition::ended`]).
    pub(super) fn end_attempt_as(&mut self, task: TaskId, outcome: AttemptOutcome, now: Millis) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let (Some(worker), Some(collected_at), TaskState::Running) =
            (t.worker, t.started_at, t.state)
        else {
            return;
        };
        let worker_name = self
            .workers
            .get(&worker)
            .map(|w| w.spec.name.clone())
            .unwrap_or_default();
        self.ending = Some((
            task,
            AttemptEnd {
                attempt: t.attempts,
                worker,
                worker_name,
                collected_at,
                finished_at: now,
                outcome,
                retry_delay_ms: None,
            },
        ));
    }

    /// The attempt that `task`'s transition being emitted ends, if any.
    fn take_ending(&mut self, task: TaskId) -> Option<Box<AttemptEnd>> {
        match &self.ending {
            Some((t, _)) if *t == task => self.ending.take().map(|(_, e)| Box::new(e)),
            _ => None,
        }
    }

    /// Records the wait before the retry that follows the attempt being
    /// ended.
    fn note_retry_delay(&mut self, task: TaskId, delay: u64) {
        if let Some((t, end)) = &mut self.ending
            && *t == task
        {
            end.retry_delay_ms = Some(delay);
        }
    }

    /// Decides what follows a failed attempt: a retry after `retry_after_ms`
    /// or the backoff, or `Dead` when aborted or out of attempts.
    pub(super) fn attempt_failed(
        &mut self,
        task: TaskId,
        error: String,
        retry_after_ms: Option<u64>,
        abort: bool,
        now: Millis,
    ) {
        let t = &self.tasks[&task];
        if abort || t.attempts >= t.spec.max_attempts {
            self.finish(task, TaskState::Dead, Some(error), now);
        } else {
            let delay = retry_after_ms.unwrap_or_else(|| {
                let unit = self.rng.next_f64();
                t.spec.backoff.delay(t.attempts, unit)
            });
            self.note_retry_delay(task, delay);
            self.retry(task, error, now.saturating_add(delay), now);
        }
    }

    /// Ends the attempt a worker reports on: checks the lease, renews the
    /// worker's own lease, frees the slot and counts the outcome.
    pub(super) fn end_attempt(
        &mut self,
        task: TaskId,
        worker: WorkerId,
        succeeded: bool,
        now: Millis,
    ) -> Result<(), CoreError> {
        self.check_lease(task, worker)?;
        self.renew(worker, now);
        self.release(task);
        if let Some(w) = self.workers.get_mut(&worker) {
            if succeeded {
                w.completed += 1;
            } else {
                w.failed += 1;
            }
        }
        Ok(())
    }

    /// Takes a task off the worker it was assigned to, freeing the slot.
    /// Returns true when the worker had not collected it yet.
    pub(super) fn release(&mut self, task: TaskId) -> bool {
        self.clear_deadline(task);
        self.forget_claim(task);
        let Some(wid) = self.tasks.get(&task).and_then(|t| t.worker) else {
            return false;
        };
        let released = self.change_worker(wid, |w| {
            if !w.running.remove(&task) {
                return None;
            }
            let pos = w.undelivered.iter().position(|&(t, _)| t == task);
            Some(pos.and_then(|p| w.undelivered.remove(p)).is_some())
        });
        match released.flatten() {
            Some(undelivered) => {
                if !undelivered {
                    self.uncollect(task);
                }
                self.attempt_ended(task);
                self.unwatch_if_caught_up(wid);
                undelivered
            }
            None => false,
        }
    }

    /// The task no longer waits for its worker's claim.
    pub(super) fn forget_claim(&mut self, task: TaskId) {
        if let Some(at) = self.claim_by.remove(&task) {
            self.unclaimed.remove(&(at, task));
        }
    }

    /// A task the worker never got (kept on it across a takeover and not
    /// claimed, or in a poll answer that was lost) goes back to its queue:
    /// the attempt did not run.
    pub(super) fn return_unclaimed(&mut self, task: TaskId, now: Millis) {
        if self
            .tasks
            .get(&task)
            .is_none_or(|t| t.state != TaskState::Running)
        {
            return;
        }
        self.release(task);
        if let Some(t) = self.tasks.get_mut(&task) {
            t.attempts = t.attempts.saturating_sub(1);
        }
        self.make_queued(task, now);
        self.emit(task, None);
    }

    /// Returns the tasks whose claim did not come in time.
    pub(super) fn expire_unclaimed(&mut self, now: Millis) {
        while let Some(&(at, task)) = self.unclaimed.first() {
            if at > now {
                break;
            }
            self.forget_claim(task);
            self.return_unclaimed(task, now);
        }
    }

    /// A collected task leaves its worker: one fewer running in its queue.
    pub(super) fn uncollect(&mut self, task: TaskId) {
        if let Some(q) = self
            .tasks
            .get(&task)
            .and_then(|t| self.queues.get_mut(&t.spec.queue))
        {
            q.collected -= 1;
        }
    }

    pub(super) fn clear_deadline(&mut self, task: TaskId) {
        if let Some(at) = self.tasks.get(&task).and_then(Task::deadline) {
            self.deadlines.remove(&(at, task));
        }
    }

    /// Removes a queued or scheduled task from its ready lane or timers.
    pub(super) fn unindex(&mut self, task: TaskId) {
        let t = &self.tasks[&task];
        match t.state {
            TaskState::Queued => {
                let lane = (t.spec.kind.clone(), t.spec.queue.clone());
                let key = (t.rank, t.seq, task);
                self.remove_ready(&lane, key);
            }
            TaskState::Scheduled => {
                if let Some(at) = t.ready_at {
                    self.timers.remove(&(at, task));
                }
            }
            _ => {}
        }
    }

    /// Takes a key out of its lane, keeping the queue's count.
    pub(super) fn remove_ready(&mut self, lane: &Lane, key: ReadyKey) {
        if let Some(lanes) = self.ready.get_mut(&lane.0)
            && let Some(r) = lanes.get_mut(&lane.1)
            && r.remove(&key)
        {
            if r.is_empty() {
                lanes.remove(&lane.1);
                if lanes.is_empty() {
                    self.ready.remove(&lane.0);
                }
            }
            if let Some(q) = self.queues.get_mut(&lane.1) {
                q.ready = q.ready.saturating_sub(1);
            }
        }
    }

    /// Makes the spec share the scheduler's copy of its queue name, and of
    /// its type name when a worker runs the type or tasks of it are queued,
    /// so that a million queued tasks do not hold a million copies of the
    /// same few strings.
    pub(super) fn intern(&mut self, spec: &mut TaskSpec) {
        self.queue_mut(&spec.queue);
        if let Some((k, _)) = self.queues.get_key_value(&*spec.queue) {
            spec.queue = k.clone();
        }
        let kind = self
            .by_type
            .get_key_value(&*spec.kind)
            .map(|(k, _)| k)
            .or_else(|| self.ready.get_key_value(&*spec.kind).map(|(k, _)| k));
        if let Some(k) = kind {
            spec.kind = k.clone();
        }
    }

    /// The queue of that name, created with default settings when first
    /// named.
    pub(super) fn queue_mut(&mut self, name: &Arc<str>) -> &mut QueueState {
        self.queues
            .entry(name.clone())
            .or_insert_with(|| QueueState::new(QueueConfig::default()))
    }

    pub(super) fn make_queued(&mut self, id: TaskId, now: Millis) {
        let aging = self.config.aging_ms as i64;
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.started_at = None;
        t.rank = (now as i64).saturating_sub(i64::from(t.spec.priority).saturating_mul(aging));
        self.put_back(id);
    }

    /// Puts a task into its ready lane at its current rank: a task assigned
    /// to a worker that never collected it goes back to where it was.
    pub(super) fn put_back(&mut self, id: TaskId) {
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.state = TaskState::Queued;
        t.worker = None;
        t.ready_at = None;
        let key = (t.rank, t.seq, id);
        let lane = (t.spec.kind.clone(), t.spec.queue.clone());
        let global = self.global_pass;
        let q = self.queue_mut(&lane.1);
        // A queue that wakes up starts at the current pass: it gets its
        // share from now on, not a burst for the time it was idle.
        if q.ready == 0 {
            q.pass = q.pass.max(global);
        }
        q.ready += 1;
        self.ready
            .entry(lane.0)
            .or_default()
            .entry(lane.1)
            .or_default()
            .insert(key);
    }

    pub(super) fn make_scheduled(&mut self, id: TaskId, at: Millis) {
        let t = self.tasks.get_mut(&id).expect("task is live");
        t.state = TaskState::Scheduled;
        t.worker = None;
        t.started_at = None;
        t.ready_at = Some(at);
        self.timers.insert((at, id));
    }

    /// Requeues a task after a failed attempt, at once or after a delay.
    pub(super) fn retry(&mut self, id: TaskId, error: String, at: Millis, now: Millis) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.last_error = Some(error.into_boxed_str());
        }
        if at > now {
            self.make_scheduled(id, at);
        } else {
            self.make_queued(id, now);
        }
        self.emit(id, None);
    }

    /// Moves a task to a terminal state and forgets it, then settles the
    /// tasks waiting for it.
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        state: TaskState,
        error: Option<String>,
        now: Millis,
    ) {
        if self.finish_one(id, state, error, now) {
            self.cascade(vec![(id, state)], now);
        }
    }

    /// Settles the children of ended parents, and theirs in turn when they
    /// are cancelled. A work list, not recursion: chains can be long.
    pub(super) fn cascade(&mut self, mut ended: Vec<(TaskId, TaskState)>, now: Millis) {
        while let Some((parent, state)) = ended.pop() {
            for child in self.children.remove(&parent).unwrap_or_default() {
                ended.extend(self.settle_parent(child, parent, state, now));
            }
        }
    }

    /// One parent of a waiting task ended: one fewer to wait for when it
    /// succeeded, otherwise the task is cancelled (and returned, so that its
    /// own children are settled too).
    pub(super) fn settle_parent(
        &mut self,
        task: TaskId,
        parent: TaskId,
        state: TaskState,
        now: Millis,
    ) -> Option<(TaskId, TaskState)> {
        let t = self.tasks.get_mut(&task)?;
        if t.waiting_on == 0 {
            return None;
        }
        if t.spec.join {
            // A join ends with its last child, or its first failed one.
            let done = if state == TaskState::Succeeded {
                t.waiting_on -= 1;
                (t.waiting_on == 0).then_some((TaskState::Succeeded, None))
            } else {
                t.waiting_on = 0;
                Some((
                    TaskState::Dead,
                    Some(format!("task {parent} ended {state}")),
                ))
            };
            let (end, error) = done?;
            return self
                .finish_one(task, end, error, now)
                .then_some((task, end));
        }
        if state == TaskState::Succeeded {
            t.waiting_on -= 1;
            if t.waiting_on == 0 {
                match t.ready_at.filter(|&at| at > now) {
                    Some(at) => self.make_scheduled(task, at),
                    None => self.make_queued(task, now),
                }
                self.emit(task, None);
            }
            None
        } else {
            t.waiting_on = 0;
            let reason = format!("parent task {parent} ended {state}");
            self.finish_one(task, TaskState::Cancelled, Some(reason), now)
                .then_some((task, TaskState::Cancelled))
        }
    }

    /// Moves one task to a terminal state and forgets it; false when the
    /// core does not hold it.
    pub(super) fn finish_one(
        &mut self,
        id: TaskId,
        state: TaskState,
        error: Option<String>,
        now: Millis,
    ) -> bool {
        self.clear_deadline(id);
        let Some(mut t) = self.tasks.remove(&id) else {
            return false;
        };
        if let Some(q) = self.queues.get_mut(&t.spec.queue) {
            q.live -= 1;
            if q.is_idle() {
                self.queues.remove(&t.spec.queue);
            }
        }
        if let Some(w) = t.spec.pinned
            && let Some(set) = self.pinned.get_mut(&w)
        {
            set.remove(&id);
            if set.is_empty() {
                self.pinned.remove(&w);
            }
        }
        t.state = state;
        if let Some(e) = error {
            t.last_error = Some(e.into_boxed_str());
        }
        let ended = self.take_ending(id);
        self.events.push(Event::Transition(Transition {
            task: id,
            state,
            attempts: t.attempts,
            worker: t.worker,
            started_at: t.started_at,
            finished_at: Some(now),
            ready_at: None,
            error: t.last_error.map(String::from),
            ended,
        }));
        true
    }

    /// Records the current state of a live task as an event.
    pub(super) fn emit(&mut self, id: TaskId, finished_at: Option<Millis>) {
        let ended = self.take_ending(id);
        let t = &self.tasks[&id];
        self.events.push(Event::Transition(Transition {
            task: id,
            state: t.state,
            attempts: t.attempts,
            worker: t.worker,
            started_at: t.started_at,
            finished_at,
            ready_at: t.ready_at,
            error: t.last_error.as_deref().map(String::from),
            ended,
        }));
    }

    pub(super) fn fire_timers(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            self.make_queued(id, now);
            self.emit(id, None);
        }
    }

    /// Fails attempts past their `timeout_ms`: the worker is told to stop
    /// (as for a cancel), the slot is freed, and the task is retried or dead.
    pub(super) fn expire_timeouts(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let worker = self.tasks.get(&id).and_then(|t| t.worker);
            let limit = self.tasks.get(&id).and_then(|t| t.spec.timeout_ms);
            self.end_attempt_as(id, AttemptOutcome::Timeout, now);
            self.release(id);
            if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
                notify_stop(w, id);
                self.events.push(Event::Stop {
                    worker: w.id,
                    task: id,
                });
                w.failed += 1;
            }
            let error = format!(
                "timeout after {} ms (the task's timeout_ms)",
                limit.unwrap_or_default()
            );
            self.attempt_failed(id, error, None, false, now);
        }
    }
}
