//! Dispatch: which ready task goes to which worker, under the queues' and
//! types' limits and the task's routing strategy.

use super::*;

impl<B> Scheduler<B> {
    /// Assigns ready tasks to workers with free slots.
    ///
    /// A frontier holds the head of every lane (type, queue) that may start
    /// a task now: a worker has a free slot for the type, the queue is not
    /// paused, and neither the queue's nor the type's limits are reached.
    /// It is ordered by the queue's stride pass, then the task's rank, so
    /// queues share workers by weight and tasks within a queue go by aged
    /// priority. The first task its strategy (and per-key limit) can place
    /// is assigned; a task that must wait for one particular worker is
    /// passed over, up to `SCAN_LIMIT` deep per lane, so it does not hold up
    /// the tasks behind it.
    ///
    /// The frontier is built once per call, not once per assignment: within
    /// one call assignments only use up slots, tokens and per-key room, so
    /// a lane that may not start, or a task that could not be placed, stays
    /// so until the call ends and need not be looked at again. Passes only
    /// grow, so an entry whose queue moved on since it was pushed is pushed
    /// back with the new pass when it comes up. The result is the same as
    /// rebuilding the frontier before every assignment (`dispatch_rebuilt`,
    /// which the tests compare it with).
    pub(super) fn dispatch(&mut self, now: Millis) {
        self.refill_limits(now);
        if self.free_slots == 0 {
            return;
        }
        let mut frontier: BinaryHeap<Reverse<FrontierEntry>> = BinaryHeap::new();
        for (kind, lanes) in &self.ready {
            if !self.type_may_start(kind) {
                continue;
            }
            for (queue, keys) in lanes {
                let Some(q) = self.queues.get(queue) else {
                    continue;
                };
                if q.may_start()
                    && let Some(key) = keys.first()
                {
                    frontier.push(Reverse((q.pass, *key, 0, (kind.clone(), queue.clone()))));
                }
            }
        }
        while self.free_slots > 0
            && let Some(Reverse((pushed_pass, key, depth, lane))) = frontier.pop()
        {
            let pass = self.queues.get(&lane.1).map_or(0, |q| q.pass);
            if pass != pushed_pass {
                frontier.push(Reverse((pass, key, depth, lane)));
                continue;
            }
            if !self.lane_may_start(&lane) {
                continue;
            }
            let next = self.lane(&lane.0, &lane.1).and_then(|r| {
                r.range((Bound::Excluded(key), Bound::Unbounded))
                    .next()
                    .copied()
            });
            if self.key_allows(key.2)
                && let Some(worker) = self.route(key.2, &lane.0)
            {
                self.take_ready(&lane, key);
                self.assign(key.2, worker, now);
                // The task after it moves up to its place in the lane.
                if let Some(next) = next {
                    let pass = self.queues.get(&lane.1).map_or(0, |q| q.pass);
                    frontier.push(Reverse((pass, next, depth, lane)));
                }
            } else if depth + 1 < SCAN_LIMIT
                && let Some(next) = next
            {
                frontier.push(Reverse((pass, next, depth + 1, lane)));
            }
        }
    }

    /// The reference `dispatch`: rebuilds the frontier from every lane
    /// before each assignment. Slower, and obviously right.
    #[cfg(test)]
    pub(crate) fn dispatch_rebuilt(&mut self, now: Millis) {
        self.refill_limits(now);
        loop {
            let mut frontier: BinaryHeap<Reverse<(u64, ReadyKey, Lane, usize)>> = self
                .ready
                .iter()
                .flat_map(|(kind, lanes)| lanes.iter().map(move |(queue, r)| (kind, queue, r)))
                .map(|(kind, queue, r)| ((kind.clone(), queue.clone()), r))
                .filter(|(lane, _)| self.lane_may_start(lane))
                .filter_map(|(lane, r)| {
                    let pass = self.queues.get(&lane.1).map_or(0, |q| q.pass);
                    r.first().map(|key| Reverse((pass, *key, lane, 0)))
                })
                .collect();
            let mut placed = None;
            while let Some(Reverse((pass, key, lane, depth))) = frontier.pop() {
                if self.key_allows(key.2)
                    && let Some(worker) = self.route(key.2, &lane.0)
                {
                    placed = Some((key, lane, worker));
                    break;
                }
                if depth + 1 < SCAN_LIMIT
                    && let Some(next) = self
                        .lane(&lane.0, &lane.1)
                        .and_then(|r| r.range((Bound::Excluded(key), Bound::Unbounded)).next())
                {
                    frontier.push(Reverse((pass, *next, lane, depth + 1)));
                }
            }
            let Some((key, lane, worker)) = placed else {
                break;
            };
            self.take_ready(&lane, key);
            self.assign(key.2, worker, now);
        }
    }

    /// Like `tick`, with the reference dispatch.
    #[cfg(test)]
    pub(crate) fn tick_rebuilt(&mut self, now: Millis) {
        self.fire_timers(now);
        self.expire_timeouts(now);
        self.expire_leases(now);
        self.expire_uncollected(now);
        self.dispatch_rebuilt(now);
    }

    pub(super) fn refill_limits(&mut self, now: Millis) {
        for q in self.queues.values_mut() {
            q.limiter.refill(now);
        }
        for l in self.type_limits.values_mut() {
            l.refill(now);
        }
    }

    /// Takes the task being assigned out of its lane and advances its
    /// queue's stride pass.
    pub(super) fn take_ready(&mut self, lane: &Lane, key: ReadyKey) {
        self.remove_ready(lane, key);
        let q = self.queue_mut(&lane.1);
        let pass = q.pass;
        q.pass += q.stride();
        self.global_pass = self.global_pass.max(pass);
    }

    /// The queued tasks of one lane.
    pub(super) fn lane(&self, kind: &str, queue: &str) -> Option<&BTreeSet<ReadyKey>> {
        self.ready.get(kind).and_then(|lanes| lanes.get(queue))
    }

    /// True when a task of this type may start now, as far as free slots
    /// and the type's limits go.
    pub(super) fn type_may_start(&self, kind: &str) -> bool {
        self.by_type.get(kind).is_some_and(|tw| tw.free > 0)
            && self.type_limits.get(kind).is_none_or(Limiter::allows)
    }

    /// True when a task of this lane may start now, as far as free slots,
    /// pause and limits go.
    pub(super) fn lane_may_start(&self, (kind, queue): &Lane) -> bool {
        self.type_may_start(kind) && self.queues.get(queue).is_none_or(QueueState::may_start)
    }

    /// True when the task's routing key is under its queue's per-key limit.
    pub(super) fn key_allows(&self, task: TaskId) -> bool {
        let t = &self.tasks[&task];
        self.queues
            .get(&t.spec.queue)
            .is_none_or(|q| q.key_allows(t.spec.routing_key.as_ref()))
    }

    /// Counts an attempt against its queue, type and key limits.
    pub(super) fn attempt_started(&mut self, task: TaskId) {
        let t = &self.tasks[&task];
        let (kind, queue, key) = (
            t.spec.kind.clone(),
            t.spec.queue.clone(),
            t.spec.routing_key.clone(),
        );
        let q = self.queue_mut(&queue);
        q.limiter.start();
        if let (Some(_), Some(k)) = (q.config.max_per_key, key) {
            *q.by_key.entry(k).or_insert(0) += 1;
        }
        if let Some(l) = self.type_limits.get_mut(&kind) {
            l.start();
        }
    }

    /// Releases what `attempt_started` counted.
    pub(super) fn attempt_ended(&mut self, task: TaskId) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        if let Some(q) = self.queues.get_mut(&t.spec.queue) {
            q.limiter.end();
            if let Some(k) = &t.spec.routing_key
                && let Some(n) = q.by_key.get_mut(k)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.by_key.remove(k);
                }
            }
        }
        if let Some(l) = self.type_limits.get_mut(&t.spec.kind) {
            l.end();
        }
    }

    /// The worker `task` goes to now by its strategy, among the workers of
    /// its type that carry its labels; `None` when it must wait.
    pub(super) fn route(&mut self, task: TaskId, kind: &str) -> Option<WorkerId> {
        let t = &self.tasks[&task];
        let tw = self.by_type.get_mut(kind)?;
        let workers = &self.workers;
        let spec = &t.spec;
        if spec.join {
            return None;
        }
        let fits =
            |c: &Candidate| spec.labels.is_empty() || workers[&c.id].has_labels(&spec.labels);
        // A pinned task has one candidate, whatever its strategy.
        if let Some(p) = spec.pinned {
            let c = &tw.workers[*tw.position.get(&p)?];
            return (c.free() > 0 && fits(c)).then_some(p);
        }
        let unless_full = |c: &Candidate| (c.free() > 0).then_some(c.id);
        match spec.strategy {
            Strategy::RoundRobin => routing::round_robin(&tw.workers, &mut tw.cursor, fits),
            // Only joins carry these, and joins never run on a worker.
            Strategy::Broadcast | Strategy::Sharding => None,
            Strategy::WeightedRoundRobin => routing::weighted_round_robin(&mut tw.workers, fits),
            Strategy::Random => routing::random(&tw.workers, fits, || self.rng.next_f64()),
            Strategy::LeastLoaded => routing::least_loaded(&tw.workers, fits),
            Strategy::ConsistentHash if spec.labels.is_empty() && spec.routing_key.is_some() => {
                let key = spec.routing_key.as_ref()?;
                let i = match tw.hashed.get(key) {
                    Some(&i) => i,
                    None => {
                        let i = routing::rendezvous(&tw.workers, |_| true, key)?;
                        if tw.hashed.len() >= HASH_CACHE_LIMIT {
                            tw.hashed.clear();
                        }
                        tw.hashed.insert(key.clone(), i);
                        i
                    }
                };
                unless_full(&tw.workers[i])
            }
            Strategy::ConsistentHash => {
                let fallback;
                let key: &str = match &spec.routing_key {
                    Some(k) => k,
                    None => {
                        fallback = task.to_string();
                        &fallback
                    }
                };
                routing::rendezvous(&tw.workers, fits, key)
                    .and_then(|i| unless_full(&tw.workers[i]))
            }
            // Registration order decides who is first.
            Strategy::Failover => tw.workers.iter().find(|c| fits(c)).and_then(unless_full),
        }
    }

    /// Gives a ready task (just taken out of its lane) to a worker: it
    /// holds a slot there and stays `Queued` until the worker collects it.
    pub(super) fn assign(&mut self, task: TaskId, worker: WorkerId, now: Millis) {
        let collect_ms = self.config.collect_ms;
        let watch = self
            .change_worker(worker, |w| {
                w.running.insert(task);
                w.undelivered.push_back((task, now));
                match &mut w.demand {
                    Some(d) => *d = d.saturating_sub(1),
                    None if w.collect_by.is_none() => {
                        let by = now.saturating_add(collect_ms);
                        w.collect_by = Some(by);
                        return Some(by);
                    }
                    None => {}
                }
                None
            })
            .expect("routed to a live worker");
        if let Some(by) = watch {
            self.collect_checks.insert((by, worker));
        }
        self.attempt_started(task);
        let t = self.tasks.get_mut(&task).expect("ready task is live");
        t.worker = Some(worker);
        self.events.push(Event::Assigned { task, worker });
    }
}
