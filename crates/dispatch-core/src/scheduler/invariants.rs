//! The invariants the scheduler keeps, checked after every step of the
//! property tests and the simulation.

use super::*;

impl<B> Scheduler<B> {
    /// Checks the internal invariants; tests call it after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        // An attempt noted as ending rides on the transition emitted in the
        // same input: none is left over between inputs.
        if let Some((task, end)) = &self.ending {
            return Err(format!(
                "attempt {} of task {task} ended without a transition",
                end.attempt
            ));
        }
        // A task waiting for its worker's claim runs on that worker, and
        // both indexes of the claims agree.
        if self.unclaimed.len() != self.claim_by.len() {
            return Err("the claim indexes disagree".into());
        }
        for &(at, t) in &self.unclaimed {
            if self.claim_by.get(&t) != Some(&at) {
                return Err(format!(
                    "task {t} waits for a claim by {at} in one index only"
                ));
            }
            match self.tasks.get(&t) {
                Some(task) if task.state == TaskState::Running && task.worker.is_some() => {}
                _ => return Err(format!("unclaimed task {t} is not running on a worker")),
            }
        }
        let mut leased = BTreeSet::new();
        for w in self.workers.values() {
            if w.in_flight() > w.spec.capacity {
                return Err(format!("worker {} over capacity", w.id));
            }
            for t in &w.running {
                let task = self
                    .tasks
                    .get(t)
                    .ok_or(format!("worker {} holds unknown task {t}", w.id))?;
                let collected = !w.undelivered.iter().any(|(u, _)| u == t);
                let state = if collected {
                    TaskState::Running
                } else {
                    TaskState::Queued
                };
                if task.state != state || task.worker != Some(w.id) {
                    return Err(format!(
                        "task {t} on worker {} is {:?}/{:?}",
                        w.id, task.state, task.worker
                    ));
                }
                if collected && (task.attempts == 0 || task.started_at.is_none()) {
                    return Err(format!("running task {t} has no attempt or start"));
                }
                if collected
                    && let Some(at) = task.deadline()
                    && !self.deadlines.contains(&(at, *t))
                {
                    return Err(format!("running task {t} has no deadline timer"));
                }
                if task.spec.pinned.is_some_and(|p| p != w.id) {
                    return Err(format!("task {t} pinned elsewhere runs on {}", w.id));
                }
                if task.spec.join {
                    return Err(format!("join {t} was given to worker {}", w.id));
                }
                if !w.has_labels(&task.spec.labels) {
                    return Err(format!("worker {} lacks the labels of task {t}", w.id));
                }
                if !w.handles(&task.spec.kind) {
                    return Err(format!(
                        "worker {} got type {} it did not register",
                        w.id, task.spec.kind
                    ));
                }
                if !leased.insert(*t) {
                    return Err(format!("task {t} leased twice"));
                }
            }
            for (t, _) in &w.undelivered {
                if !w.running.contains(t) {
                    return Err(format!("undelivered task {t} not held by {}", w.id));
                }
            }
            if let (Some((_, at)), None) = (w.undelivered.front(), w.demand) {
                let watched = w.collect_by.is_some_and(|by| {
                    by <= at.saturating_add(self.config.collect_ms)
                        && self.collect_checks.contains(&(by, w.id))
                });
                if !watched {
                    return Err(format!("uncollected tasks of {} are not watched", w.id));
                }
            }
            if w.demand.is_some_and(|d| d > w.spec.capacity) {
                return Err(format!("worker {} asks for more than its capacity", w.id));
            }
        }
        let mut queued = 0;
        let mut scheduled = 0;
        for t in self.tasks.values() {
            match t.state {
                TaskState::Running if !leased.contains(&t.id) => {
                    return Err(format!("running task {} held by no worker", t.id));
                }
                TaskState::Queued if t.worker.is_some() && !leased.contains(&t.id) => {
                    return Err(format!("assigned task {} held by no worker", t.id));
                }
                TaskState::Queued if t.worker.is_some() => {}
                TaskState::Queued => {
                    queued += 1;
                    let key = (t.rank, t.seq, t.id);
                    if !self
                        .lane(&t.spec.kind, &t.spec.queue)
                        .is_some_and(|r| r.contains(&key))
                    {
                        return Err(format!("queued task {} not in the ready queue", t.id));
                    }
                }
                TaskState::Scheduled
                    if t.waiting_on > 0
                        && t.ready_at
                            .is_some_and(|at| self.timers.contains(&(at, t.id))) =>
                {
                    return Err(format!("task {} waits for parents and has a timer", t.id));
                }
                TaskState::Scheduled if t.waiting_on > 0 => {}
                TaskState::Scheduled => {
                    scheduled += 1;
                    let at = t
                        .ready_at
                        .ok_or(format!("scheduled task {} without time", t.id))?;
                    if !self.timers.contains(&(at, t.id)) {
                        return Err(format!("scheduled task {} has no timer", t.id));
                    }
                }
                s if s.is_terminal() => return Err(format!("terminal task {} still held", t.id)),
                _ => {}
            }
        }
        let mut per_queue: HashMap<&str, (usize, u32)> = HashMap::new();
        let mut per_type: HashMap<&str, u32> = HashMap::new();
        let mut live: HashMap<&str, (usize, usize)> = HashMap::new();
        // Limits count the tasks holding a slot, collected or not.
        for t in self.tasks.values() {
            let l = live.entry(&t.spec.queue).or_default();
            l.0 += 1;
            l.1 += usize::from(t.state == TaskState::Running);
            let e = per_queue.entry(&t.spec.queue).or_default();
            if t.worker.is_some() {
                e.1 += 1;
                *per_type.entry(&t.spec.kind).or_default() += 1;
            } else if t.state == TaskState::Queued {
                e.0 += 1;
            }
        }
        for name in live.keys() {
            if !self.queues.contains_key(*name) {
                return Err(format!("queue {name} of live tasks was forgotten"));
            }
        }
        for (name, q) in &self.queues {
            let (n, collected) = live.get(&**name).copied().unwrap_or_default();
            if q.live != n || q.collected != collected {
                return Err(format!(
                    "queue {name}: counted {} live / {} running, but {n} / {collected}",
                    q.live, q.collected
                ));
            }
            let (ready, running) = per_queue.get(&**name).copied().unwrap_or_default();
            if q.ready != ready || q.limiter.running != running {
                return Err(format!(
                    "queue {name}: counted {} ready / {} running, but {ready} / {running}",
                    q.ready, q.limiter.running
                ));
            }
            if let Some(max) = q.config.max_running
                && running > max
            {
                return Err(format!("queue {name} runs {running} > max {max}"));
            }
            q.limiter
                .check()
                .map_err(|e| format!("queue {name}: {e}"))?;
            if let Some(max) = q.config.max_per_key
                && let Some((key, n)) = q.by_key.iter().find(|(_, n)| **n > max)
            {
                return Err(format!(
                    "queue {name} runs {n} tasks of key {key}, over its max_per_key {max}"
                ));
            }
        }
        for (kind, l) in &self.type_limits {
            l.check().map_err(|e| format!("type {kind}: {e}"))?;
            let running = per_type.get(&**kind).copied().unwrap_or_default();
            if l.running != running || l.max_running.is_some_and(|m| running > m) {
                return Err(format!(
                    "type {kind}: limiter says {} running, really {running}",
                    l.running
                ));
            }
        }
        for &(at, id) in &self.deadlines {
            let ok = self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == TaskState::Running && t.deadline() == Some(at));
            if !ok {
                return Err(format!(
                    "deadline of task {id} does not match a running attempt"
                ));
            }
        }
        let ready_len: usize = self
            .ready
            .values()
            .flat_map(HashMap::values)
            .map(BTreeSet::len)
            .sum();
        if ready_len != queued || self.timers.len() != scheduled {
            return Err(format!(
                "index sizes: ready {ready_len} vs {queued} queued, timers {} vs {scheduled} scheduled",
                self.timers.len()
            ));
        }
        let free: u64 = self
            .workers
            .values()
            .map(|w| u64::from(w.free_slots()))
            .sum();
        if free != self.free_slots {
            return Err(format!(
                "free slots: counted {} but {free}",
                self.free_slots
            ));
        }
        for (kind, tw) in &self.by_type {
            for (i, c) in tw.workers.iter().enumerate() {
                let w = self
                    .workers
                    .get(&c.id)
                    .ok_or(format!("type {kind} routes to unknown worker {}", c.id))?;
                if c.in_flight != w.in_flight()
                    || c.capacity != w.spec.capacity
                    || c.demand != w.asks()
                {
                    return Err(format!(
                        "routing view of worker {} in {kind} is stale",
                        c.id
                    ));
                }
                if tw.position.get(&c.id) != Some(&i) || tw.position.len() != tw.workers.len() {
                    return Err(format!("position of worker {} in {kind} is wrong", c.id));
                }
            }
            for (key, &i) in &tw.hashed {
                if routing::rendezvous(&tw.workers, |_| true, key) != Some(i) {
                    return Err(format!(
                        "stale consistent_hash choice for key {key} in {kind}"
                    ));
                }
            }
            let free: u64 = tw
                .workers
                .iter()
                .map(|c| u64::from(self.workers[&c.id].free_slots()))
                .sum();
            if free != tw.free {
                return Err(format!(
                    "free slots of {kind}: counted {} but {free}",
                    tw.free
                ));
            }
        }
        Ok(())
    }
}
