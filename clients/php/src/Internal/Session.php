<?php

declare(strict_types=1);

namespace Dispatch\Internal;

use Dispatch\ApiException;
use Dispatch\ConnectionException;
use Dispatch\Context;
use Dispatch\TaskInterface;

/**
 * One registration of a worker, from `POST /v1/workers` to a stop or a
 * lost lease: the loop of the HTTP worker protocol (docs/workers.md).
 *
 * Two requests may be in flight at once, on one curl multi handle:
 *
 * - the **fetch**: a long poll asking for as many tasks as there are free
 *   slots (`max`), sent whenever a slot is free and none is open, and
 *   carrying the results finished before it left;
 * - the **report**: a poll with `max: 0`, which the server answers at once,
 *   carrying the results finished while the fetch waits, and sent every
 *   `heartbeat_ms` when no fetch is open (every slot busy) to renew the
 *   lease and hear of cancellations.
 *
 * Every poll names the tasks still held (`running`): those running, those
 * handed over and not started yet, and those whose report is not answered
 * yet. Once the tasks of a fetch's answer are held, the answer's
 * `handout` is acknowledged (`last_handout`) in every later poll and
 * heartbeat, so that the scheduler gives back at once a task whose answer
 * never arrived here. Tasks run in
 * processes of their own ({@see Child}), or one at a time in this process.
 * A request that fails (no answer, 5xx, 429) gives its results back to be
 * sent again, and the next request waits a backoff (100 ms doubling to
 * 5 s; at once on the next server when one could not be reached).
 *
 * @internal
 */
final class Session
{
    /** The cap of the backoff after failed requests, in seconds. */
    private const MAX_BACKOFF = 5.0;

    private \CurlMultiHandle $multi;
    // Task ids key the arrays below: PHP turns the numeric ones into
    // integers, so each is cast back to a string where it is read.

    /** @var array<string, Child> running tasks by id */
    private array $children = [];
    /** @var array<string, string> finished tasks' reports, by task id, not yet sent */
    private array $pending = [];
    /** @var array{exchange: Exchange, results: array<string, string>, fetch: bool}|null */
    private ?array $fetch = null;
    /** @var array{exchange: Exchange, results: array<string, string>, fetch: bool}|null */
    private ?array $report = null;
    /** When a poll last renewed the lease (when it was sent). */
    private float $contact;
    private float $notBefore = 0.0;
    private float $backoff = 0.1;
    /** Servers that could not be reached in a row. */
    private int $unreachable = 0;
    /** @var array<string, float> tasks reported because of a cancel notice, and when */
    private array $cancelled = [];
    private bool $lost = false;
    private bool $forced = false;
    private ?float $stoppingSince = null;
    /** Set by SIGCHLD: a process ended since the last wait. */
    private bool $childEnded = false;
    /** @var array<string, array<string, mixed>> tasks handed over, to start, by id */
    private array $handed = [];
    /** The `handout` of the last fetch answer read: its tasks are all held. */
    private ?string $lastHandout = null;
    /** The task running in this process (without fork), if any. */
    private ?string $inProcess = null;

    /**
     * @param float|null $grace seconds a stop lets the running tasks finish (null: no limit)
     * @param array<string, TaskInterface|callable> $handlers by task type
     * @param \Closure(): int $stopping 0 to go on, 1 to drain, 2 to stop the running tasks
     * @param \Closure(string, string): void $log
     */
    public function __construct(
        private readonly Servers $servers,
        private readonly string $workerId,
        private readonly int $leaseMs,
        private readonly int $heartbeatMs,
        private readonly int $concurrency,
        private readonly int $pollWaitMs,
        private readonly bool $fork,
        private readonly ?float $grace,
        private readonly array $handlers,
        private readonly \Closure $stopping,
        private readonly \Closure $log,
    ) {
        $this->multi = curl_multi_init();
        $this->contact = microtime(true);
    }

    /**
     * Runs until a stop (`stopped`: every task finished and reported, or,
     * past the grace or at a second stop, was killed, to be given back by
     * leaving) or a lost lease (`lost`: the running tasks were killed, the
     * scheduler requeued them).
     */
    public function run(): string
    {
        // A process that ends interrupts the wait for answers (curl's poll
        // has no place for its socket): its report goes out at once.
        $chld = null;
        if ($this->fork && function_exists('pcntl_signal')) {
            $chld = pcntl_signal_get_handler(SIGCHLD);
            pcntl_signal(SIGCHLD, function (): void {
                $this->childEnded = true;
            }, false);
        }
        try {
            while (true) {
                $this->reap();
                $this->expire();
                $this->receive();
                while (!$this->lost && ($id = array_key_first($this->handed)) !== null) {
                    $task = $this->handed[$id];
                    unset($this->handed[$id]);
                    $this->start($task);
                }
                if ($this->lost) {
                    $this->loseEverything();
                    return 'lost';
                }
                $stopping = ($this->stopping)();
                if ($stopping > 0) {
                    $this->stoppingSince ??= microtime(true);
                    if ($this->grace !== null && microtime(true) - $this->stoppingSince >= $this->grace && $this->children && !$this->forced) {
                        ($this->log)('warning', sprintf('%d task(s) still running after the grace of %g s: giving them back', count($this->children), $this->grace));
                        $stopping = 2;
                    }
                }
                if ($stopping > 0 && $this->fetch !== null) {
                    // A poll cut short may have had tasks handed over:
                    // leaving requeues them. Its results go again.
                    $this->abandon($this->fetch);
                    $this->fetch = null;
                }
                if ($stopping > 1 && !$this->forced) {
                    $this->forced = true;
                    foreach ($this->children as $child) {
                        $child->kill('stop');
                    }
                }
                if ($stopping > 0 && !$this->children && !$this->pending && $this->report === null) {
                    return 'stopped';
                }
                $this->send($stopping > 0);
                $this->idle();
            }
        } finally {
            if ($chld !== null) {
                pcntl_signal(SIGCHLD, $chld);
            }
            foreach ([$this->fetch, $this->report] as $flight) {
                if ($flight !== null) {
                    curl_multi_remove_handle($this->multi, $flight['exchange']->curl);
                }
            }
            curl_multi_close($this->multi);
        }
    }

    /** Collects the reports of the processes that ended. */
    private function reap(): void
    {
        foreach ($this->children as $child) {
            if (!$child->poll()) {
                continue;
            }
            $id = $child->id;
            unset($this->children[$id]);
            $report = match ($child->killed) {
                null => $child->report(),
                'timeout' => Attempt::failure($id, sprintf("timeout after %d ms (the task's timeout_ms)", $child->task['timeout_ms'] ?? 0)),
                'cancel' => Attempt::failure($id, 'cancelled'),
                // 'lost': the scheduler requeued it; 'stop': leaving gives it
                // back, the attempt not counted.
                default => null,
            };
            if ($report !== null) {
                $this->pending[$id] = $report;
            }
        }
    }

    /** Kills the processes of the tasks that ran past their `timeout_ms`. */
    private function expire(): void
    {
        $now = microtime(true);
        foreach ($this->children as $child) {
            if ($child->killed === null && $child->deadline !== null && $now >= $child->deadline) {
                ($this->log)('warning', "task {$child->id} ran past its timeout_ms: killing it");
                $child->kill('timeout');
            }
        }
    }

    /** Reads the answers of the requests that finished. */
    private function receive(): void
    {
        if ($this->fetch === null && $this->report === null) {
            return;
        }
        do {
            $status = curl_multi_exec($this->multi, $active);
        } while ($status === CURLM_CALL_MULTI_PERFORM);
        while (($info = curl_multi_info_read($this->multi)) !== false) {
            $curl = $info['handle'];
            if ($this->fetch !== null && $this->fetch['exchange']->curl === $curl) {
                $flight = $this->fetch;
                $this->fetch = null;
            } elseif ($this->report !== null && $this->report['exchange']->curl === $curl) {
                $flight = $this->report;
                $this->report = null;
            } else {
                continue;
            }
            $body = curl_multi_getcontent($curl);
            curl_multi_remove_handle($this->multi, $curl);
            $this->answered($flight, $info['result'], $body);
            if ($this->lost) {
                return;
            }
        }
    }

    /**
     * Acts on one poll's answer.
     *
     * @param array{exchange: Exchange, results: array<string, string>, fetch: bool} $flight
     */
    private function answered(array $flight, int $errno, ?string $body): void
    {
        $exchange = $flight['exchange'];
        $n = $this->servers->count();
        try {
            $reply = $exchange->answer($errno, $body);
        } catch (ConnectionException $e) {
            $this->pending = $flight['results'] + $this->pending;
            if ($n > 1) {
                $this->servers->failed($exchange->server);
            }
            if (!$e->wasSent() && ++$this->unreachable < $n) {
                return; // the next server, at once
            }
            $this->unreachable = 0;
            $this->delay(null, 'warning', $e->getMessage());
            return;
        } catch (ApiException $e) {
            $status = $e->getStatus();
            if ($status === 404) {
                ($this->log)('warning', "the lease of worker {$this->workerId} was lost: registering again");
                $this->lost = true;
                return;
            }
            $this->pending = $flight['results'] + $this->pending;
            if ($status === 503 && $n > 1) {
                $this->servers->failed($exchange->server);
                if (++$this->unreachable < $n) {
                    return;
                }
                $this->unreachable = 0;
            }
            if ($status >= 500 || $status === 429 || !$flight['results']) {
                $this->delay($e->getRetryAfterMs(), 'warning', 'poll failed: ' . $e->getMessage());
                return;
            }
            // The server refused this batch of results (one too large, a
            // limit lowered): each goes on its own, so that one refused
            // does not hold back the others.
            ($this->log)('warning', 'poll refused: ' . $e->getMessage() . '; reporting its results one by one');
            foreach ($flight['results'] as $id => $report) {
                unset($this->pending[$id]);
                $this->reportAlone((string) $id, $report);
            }
            return;
        }
        $this->servers->answered($exchange->server);
        $this->unreachable = 0;
        $this->backoff = 0.1;
        $this->contact = max($this->contact, $exchange->startedAt);
        if (!is_array($reply)) {
            return;
        }
        foreach ($reply['results'] ?? [] as $r) {
            $id = (string) ($r['task_id'] ?? '');
            $status = $r['status'] ?? 0;
            if ($status === 409) {
                ($this->log)('info', "task $id: the report was refused, the task is no longer this worker's (" . ($r['detail'] ?? 'ended') . ')');
            } elseif ($status !== 200) {
                ($this->log)('warning', "task $id: the report was refused with status $status: " . ($r['detail'] ?? ''));
            } else {
                ($this->log)('debug', "task $id: " . ($r['state'] ?? 'reported'));
            }
        }
        foreach ($reply['tasks'] ?? [] as $task) {
            if (is_array($task)) {
                $this->handed[(string) ($task['id'] ?? '')] = $task;
            }
        }
        // Only the fetch hands tasks over, one answer at a time. Its tasks
        // are all held now (in $handed, named by every later poll), so the
        // answer is acknowledged from here on.
        if ($flight['fetch'] && !empty($reply['tasks']) && is_string($reply['handout'] ?? null)) {
            $this->lastHandout = $reply['handout'];
        }
        foreach ($reply['cancel'] ?? [] as $id) {
            $this->cancel((string) $id);
        }
    }

    /** Stops a task the scheduler no longer wants run, and reports it. */
    private function cancel(string $id): void
    {
        if (isset($this->children[$id])) {
            if ($this->children[$id]->killed === null) {
                ($this->log)('info', "task $id was cancelled (or timed out on the scheduler): killing it");
                $this->children[$id]->kill('cancel');
            }
            return;
        }
        if (isset($this->pending[$id]) || isset($this->fetch['results'][$id]) || isset($this->report['results'][$id])) {
            return; // its report is on the way; it ends the notices
        }
        // Handed over and cancelled before it started: it never will.
        unset($this->handed[$id]);
        $now = microtime(true);
        foreach ($this->cancelled as $done => $at) {
            if ($at < $now - 60) {
                unset($this->cancelled[$done]);
            }
        }
        if (!isset($this->cancelled[$id])) {
            // Not running here (it ended, or never started): a report,
            // answered 409, ends the notices.
            $this->cancelled[$id] = $now;
            $this->pending[$id] = Attempt::failure($id, 'cancelled');
        }
    }

    /**
     * Starts a task handed over by a poll.
     *
     * @param array<string, mixed> $task
     */
    private function start(array $task): void
    {
        $id = (string) ($task['id'] ?? '');
        $type = (string) ($task['type'] ?? '');
        $handler = $this->handlers[$type] ?? null;
        if ($handler === null) {
            $this->pending[$id] = Attempt::failure($id, "this worker has no handler for task type $type");
            return;
        }
        $now = microtime(true);
        if ($this->fork) {
            $child = Child::start($handler, $task, Context::fromTask($task, $this->workerId, $now));
            if ($child === null) {
                ($this->log)('error', "task $id: cannot fork a process for it");
                $this->pending[$id] = Attempt::failure($id, 'the worker could not fork a process for the task');
                return;
            }
            $this->children[$id] = $child;
            return;
        }
        // In this process: nothing else runs meanwhile, so the report in
        // flight is finished first, and the handler renews the lease
        // itself when it asks whether it was cancelled.
        while ($this->report !== null && !$this->lost) {
            curl_multi_select($this->multi, 0.05);
            $this->receive();
        }
        if ($this->lost) {
            return;
        }
        $this->heardCancel = [];
        $ctx = Context::fromTask($task, $this->workerId, $now, fn (): bool => $this->probe($id));
        $this->inProcess = $id;
        try {
            $report = Attempt::run($handler, $task, $ctx);
        } finally {
            $this->inProcess = null;
        }
        if (!$this->lost) {
            $this->pending[$id] = $report;
        }
    }

    /** @var array<string, true> tasks the scheduler asked to stop, heard by {@see probe()} */
    private array $heardCancel = [];

    /**
     * For a handler running in this process: renews the lease when due,
     * and tells whether the scheduler asked to stop task `$id` (or took it
     * back with a lost lease).
     */
    private function probe(string $id): bool
    {
        if ($this->lost) {
            return true;
        }
        if (isset($this->heardCancel[$id])) {
            return true;
        }
        if ((microtime(true) - $this->contact) * 1000 < $this->heartbeatMs) {
            return false;
        }
        $sent = microtime(true);
        $body = '{"max":0,"wait_ms":0,' . $this->held([]) . '}';
        try {
            $reply = $this->servers->send('POST', '/v1/workers/' . Servers::segment($this->workerId) . '/poll', $body);
        } catch (ApiException $e) {
            if ($e->getStatus() === 404) {
                ($this->log)('warning', "the lease of worker {$this->workerId} was lost: registering again");
                $this->lost = true;
                return true;
            }
            ($this->log)('warning', 'heartbeat failed: ' . $e->getMessage());
            return false;
        } catch (ConnectionException $e) {
            ($this->log)('warning', 'heartbeat failed: ' . $e->getMessage());
            return false;
        }
        $this->contact = $sent;
        foreach ($reply['cancel'] ?? [] as $cancelled) {
            $this->heardCancel[(string) $cancelled] = true;
        }
        return isset($this->heardCancel[$id]);
    }

    /**
     * Sends what is due: a fetch when a slot is free, a report when
     * results wait or the lease needs renewing.
     */
    private function send(bool $stopping): void
    {
        $now = microtime(true);
        if ($now < $this->notBefore) {
            return;
        }
        $free = $this->concurrency - count($this->children);
        if (!$stopping && $this->fetch === null && $free > 0) {
            $wait = min($this->pollWaitMs, intdiv($this->leaseMs, 2));
            $this->fetch = $this->poll($free, $wait);
            return;
        }
        $due = ($now - $this->contact) * 1000 >= $this->heartbeatMs;
        if ($this->report === null && ($this->pending || ($this->fetch === null && $due))) {
            $this->report = $this->poll(0, 0);
        }
    }

    /**
     * Starts a poll carrying every pending result.
     *
     * @return array{exchange: Exchange, results: array<string, string>, fetch: bool}
     */
    private function poll(int $max, int $waitMs): array
    {
        $results = $this->pending;
        $this->pending = [];
        $body = '{"max":' . $max . ',"wait_ms":' . $waitMs
            . ',' . $this->held($results)
            . ($results ? ',"results":[' . implode(',', $results) . ']' : '')
            . '}';
        $exchange = $this->servers->exchange(
            'POST',
            '/v1/workers/' . Servers::segment($this->workerId) . '/poll',
            $body,
            null,
            $this->servers->timeout + $waitMs / 1000,
        );
        curl_multi_add_handle($this->multi, $exchange->curl);
        // Under way now, not at the next wait.
        curl_multi_exec($this->multi, $active);
        return ['exchange' => $exchange, 'results' => $results, 'fetch' => $max > 0];
    }

    /**
     * The `running` member of a poll, with `last_handout`: every task still
     * held but those the poll reports (`$reporting`): the running ones,
     * those handed over and not started yet, and those whose report is not
     * answered yet (waiting, or carried by a request in flight). A task
     * leaves it only once the server answered its report, or a poll
     * acknowledging its answer could have it given back.
     *
     * @param array<string, string> $reporting
     */
    private function held(array $reporting): string
    {
        $running = [];
        $ids = [array_keys($this->children), array_keys($this->handed), array_keys($this->pending)];
        foreach ([$this->fetch, $this->report] as $other) {
            if ($other !== null) {
                $ids[] = array_keys($other['results']);
            }
        }
        if ($this->inProcess !== null) {
            $ids[] = [$this->inProcess];
        }
        foreach ($ids as $list) {
            foreach ($list as $id) {
                $id = (string) $id;
                if (!isset($reporting[$id])) {
                    $running[$id] = true;
                }
            }
        }
        return '"running":' . Servers::json(array_map('strval', array_keys($running)))
            . ($this->lastHandout !== null ? ',"last_handout":' . Servers::json($this->lastHandout) : '');
    }

    /** Reports one task on its own (`/complete` or `/fail`), after its batch was refused. */
    private function reportAlone(string $id, string $report): void
    {
        $item = json_decode($report, true);
        $path = '/v1/tasks/' . Servers::segment($id);
        $worker = Servers::json($this->workerId);
        try {
            if (is_array($item) && array_key_exists('result', $item)) {
                try {
                    $this->servers->send('POST', "$path/complete", '{"worker_id":' . $worker . ',"result":' . json_encode(json_decode($report)->result, JSON_PRESERVE_ZERO_FRACTION | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE) . '}');
                    return;
                } catch (ApiException $e) {
                    if ($e->getStatus() === 409 || $e->getStatus() === 404) {
                        throw $e;
                    }
                    $item = ['error' => 'the server refused the result: ' . $e->getMessage()];
                }
            }
            unset($item['task_id'], $item['result']);
            $this->servers->send('POST', "$path/fail", ['worker_id' => $this->workerId] + (array) $item);
        } catch (ApiException|ConnectionException $e) {
            ($this->log)('warning', "task $id: the report was not taken: " . $e->getMessage());
        }
    }

    /**
     * Gives back the results of a request abandoned in flight.
     *
     * @param array{exchange: Exchange, results: array<string, string>, fetch: bool} $flight
     */
    private function abandon(array $flight): void
    {
        curl_multi_remove_handle($this->multi, $flight['exchange']->curl);
        $this->pending = $flight['results'] + $this->pending;
    }

    /** Waits before the next request: the backoff, or what the server asked. */
    private function delay(?int $retryAfterMs, string $level, string $why): void
    {
        $wait = max($this->backoff, ($retryAfterMs ?? 0) / 1000);
        ($this->log)($level, sprintf('%s; trying again in %.1f s', $why, $wait));
        $this->notBefore = microtime(true) + $wait;
        $this->backoff = min($this->backoff * 2, self::MAX_BACKOFF);
    }

    /** The lease was lost: the scheduler requeued what this worker held. */
    private function loseEverything(): void
    {
        foreach ([$this->fetch, $this->report] as $flight) {
            if ($flight !== null) {
                curl_multi_remove_handle($this->multi, $flight['exchange']->curl);
            }
        }
        $this->fetch = $this->report = null;
        foreach ($this->children as $child) {
            $child->kill('lost');
        }
        foreach ($this->children as $child) {
            $child->reap(5.0);
        }
        $this->children = [];
        $this->pending = [];
        $this->handed = [];
    }

    /**
     * Sleeps until something may have happened: an answer, a task's end
     * (SIGCHLD interrupts the wait), a deadline, or a stop (checked at
     * least five times a second).
     */
    private function idle(): void
    {
        if ($this->childEnded) {
            // It ended before the wait began, so it cannot interrupt it.
            $this->childEnded = false;
            return;
        }
        $timeout = 0.2;
        $now = microtime(true);
        if ($this->notBefore > $now) {
            $timeout = min($timeout, $this->notBefore - $now);
        }
        foreach ($this->children as $child) {
            if ($child->deadline !== null && $child->killed === null) {
                $timeout = min($timeout, max(0.001, $child->deadline - $now));
            }
        }
        if ($this->fetch !== null || $this->report !== null) {
            if (curl_multi_select($this->multi, $timeout) === -1) {
                usleep((int) ($timeout * 1_000_000));
            }
            return;
        }
        if ($this->children) {
            $read = array_values(array_map(static fn (Child $c) => $c->socket(), $this->children));
            $write = $except = null;
            if (@stream_select($read, $write, $except, 0, (int) ($timeout * 1_000_000)) === false) {
                usleep((int) ($timeout * 1_000_000));
            }
            return;
        }
        usleep((int) (max(0.0, $timeout) * 1_000_000));
    }
}
