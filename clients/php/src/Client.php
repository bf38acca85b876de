<?php

declare(strict_types=1);

namespace Dispatch;

use Dispatch\Internal\Servers;

/**
 * A client of a Dispatch server's REST API: submit tasks, follow them,
 * cancel and retry them.
 *
 * ```php
 * $client = new Dispatch\Client('http://127.0.0.1:7070');
 * $task = $client->submit('email.send', ['to' => 'ada@example.com'], ['max_attempts' => 5]);
 * $done = $client->wait($task['id'], 30_000);
 * echo $done['state'], "\n"; // succeeded
 * ```
 *
 * Tasks are arrays, as the API's JSON has them (`id`, `type`, `queue`,
 * `state`, `payload`, `result`, `error`, `attempts`, ...). Every call
 * either returns the answer or throws: {@see ApiException} (and its
 * subclasses by status) when the server refused, with the problem body it
 * sent; {@see ConnectionException} when no server could be reached.
 *
 * `$url` may name several servers, comma-separated: the replicas of one
 * cluster. A request that cannot reach one, or that one answers 503 (a
 * standby cut off from the leader), goes to the next. Requests that were
 * not served (no server could be reached, or each answered 503 or 429)
 * are tried again with a backoff for `retry_ms`, so that a takeover
 * between replicas or a restart is waited out. A request that reached a
 * server and got no answer (a timeout, a cut connection) is tried again
 * only when doing it twice is harmless: a read, or a submission with an
 * `idempotency_key`; otherwise it throws, since it may have been acted on.
 */
final class Client
{
    private const OPTIONS = ['token', 'ca', 'timeout', 'retry_ms'];

    private readonly Servers $servers;
    private readonly int $retryMs;

    /**
     * @param string $url `http://HOST:PORT` or `https://HOST:PORT`, or several, comma-separated
     * @param array{token?: ?string, ca?: ?string, timeout?: int|float, retry_ms?: int} $options
     *     - `token`: bearer token, for a server started with `--tokens`
     *     - `ca`: a PEM file of the certificate authorities that vouch for an
     *       `https://` server (default: the system's)
     *     - `timeout`: seconds a request may take (default 30); `wait` adds its wait
     *     - `retry_ms`: how long requests that were not served are tried
     *       again (default 10000; 0 for one round over the servers)
     */
    public function __construct(string $url, array $options = [])
    {
        if ($unknown = array_diff(array_keys($options), self::OPTIONS)) {
            throw new \InvalidArgumentException('unknown option ' . implode(', ', $unknown) . ' (known: ' . implode(', ', self::OPTIONS) . ')');
        }
        $this->servers = new Servers($url, $options);
        $retry = $options['retry_ms'] ?? 10_000;
        if (!is_int($retry) || $retry < 0) {
            throw new \InvalidArgumentException('option retry_ms must be a non-negative integer');
        }
        $this->retryMs = $retry;
    }

    /** The server in use: the one that answered last. */
    public function url(): string
    {
        return $this->servers->current();
    }

    /**
     * Submits a task.
     *
     * @param string $type the task type: 1 to 128 of `[A-Za-z0-9._:-]`
     * @param mixed $payload any JSON-encodable value (an empty PHP array is
     *     sent as `[]`; use `new stdClass()` for `{}`)
     * @param array<string, mixed> $options any field `POST /v1/tasks` takes:
     *     `queue`, `priority` (-100 to 100), `run_at` (RFC 3339 text or a
     *     DateTimeInterface), `delay_ms` (or `delay`: seconds, or a
     *     DateInterval), `timeout_ms`, `max_attempts`,
     *     `backoff` (`['initial_ms', 'max_ms', 'multiplier', 'jitter']`),
     *     `idempotency_key`, `routing_key`, `strategy`, `labels`
     *     (name => value), `depends_on` (task ids), `shards`. The server
     *     refuses an unknown one (400, naming it).
     * @return array<string, mixed> the task; with an `idempotency_key` seen before, the original
     */
    public function submit(string $type, mixed $payload = null, array $options = []): array
    {
        $body = self::submission($type, $payload, $options);
        return $this->call('POST', '/v1/tasks', $body, null, [], isset($body['idempotency_key']));
    }

    /**
     * Submits several tasks, all or none (at most 10,000).
     *
     * @param list<array<string, mixed>> $tasks each with `type`, and
     *     `payload` and any option of {@see submit()}
     * @param bool $minimal ask for each task's `id` and `state` only
     *     (`Prefer: return=minimal`): less to write and read
     * @return list<array<string, mixed>> the tasks, in order
     */
    public function submitBatch(array $tasks, bool $minimal = false): array
    {
        $body = [];
        $repeatable = $tasks !== [];
        foreach (array_values($tasks) as $i => $task) {
            if (!is_array($task) || !is_string($task['type'] ?? null)) {
                throw new \InvalidArgumentException("tasks[$i] must be an array with a string type");
            }
            $type = $task['type'];
            $payload = array_key_exists('payload', $task) ? $task['payload'] : null;
            unset($task['type'], $task['payload']);
            $body[] = $submission = self::submission($type, $payload, $task);
            $repeatable = $repeatable && isset($submission['idempotency_key']);
        }
        $headers = $minimal ? ['Prefer: return=minimal'] : [];
        return $this->call('POST', '/v1/tasks/batch', ['tasks' => $body], null, $headers, $repeatable)['tasks'];
    }

    /**
     * One task.
     *
     * @return array<string, mixed>
     * @throws NotFoundException
     */
    public function get(string $id): array
    {
        return $this->call('GET', '/v1/tasks/' . Servers::segment($id));
    }

    /**
     * Waits until the task ended (`succeeded`, `dead` or `cancelled`) or
     * `$timeoutMs` passed, and returns it as last seen: check its `state`.
     * The server holds each request until the task ends (up to a minute
     * each), so waiting costs nothing.
     *
     * @return array<string, mixed>
     */
    public function wait(string $id, int $timeoutMs): array
    {
        $deadline = microtime(true) + max(0, $timeoutMs) / 1000;
        while (true) {
            $left = (int) max(0, ($deadline - microtime(true)) * 1000);
            $waitMs = min($left, 60_000);
            $task = $this->call('GET', '/v1/tasks/' . Servers::segment($id) . '?wait_ms=' . $waitMs, null, $this->servers->timeout + $waitMs / 1000);
            if (in_array($task['state'] ?? null, ['succeeded', 'dead', 'cancelled'], true) || $waitMs === 0) {
                return $task;
            }
        }
    }

    /**
     * Cancels a task that has not ended: a queued one never runs, a running
     * one is stopped by its worker.
     *
     * @return array<string, mixed> the task
     * @throws ConflictException when it already ended
     */
    public function cancel(string $id): array
    {
        return $this->call('POST', '/v1/tasks/' . Servers::segment($id) . '/cancel');
    }

    /**
     * Requeues a `dead` task with a fresh set of attempts.
     *
     * @return array<string, mixed> the task
     * @throws ConflictException when it is not dead
     */
    public function retry(string $id): array
    {
        return $this->call('POST', '/v1/tasks/' . Servers::segment($id) . '/retry');
    }

    /**
     * A page of tasks, newest first.
     *
     * @param array{state?: string, type?: string, queue?: string, limit?: int, cursor?: ?string} $filters
     *     `limit` is 1 to 1000 (default 100); `cursor` is the `next_cursor`
     *     of the page before
     * @return array{tasks: list<array<string, mixed>>, next_cursor: ?string}
     */
    public function list(array $filters = []): array
    {
        $query = [];
        foreach ($filters as $name => $value) {
            if ($value !== null) {
                $query[$name] = is_bool($value) ? ($value ? 'true' : 'false') : (string) $value;
            }
        }
        $path = '/v1/tasks' . ($query ? '?' . http_build_query($query, '', '&', PHP_QUERY_RFC3986) : '');
        return $this->call('GET', $path);
    }

    /**
     * Every task matching `$filters`, page after page.
     *
     * @param array{state?: string, type?: string, queue?: string, limit?: int} $filters
     * @return \Generator<int, array<string, mixed>>
     */
    public function each(array $filters = []): \Generator
    {
        $cursor = null;
        do {
            $page = $this->list(['cursor' => $cursor] + $filters);
            yield from $page['tasks'];
            $cursor = $page['next_cursor'] ?? null;
        } while ($cursor !== null);
    }

    /**
     * Cancels every live task matching the filters (`state`, `type`,
     * `queue`; at least one). Needs the `admin` scope.
     *
     * @param array{state?: string, type?: string, queue?: string} $filters
     * @return int how many were cancelled
     */
    public function cancelMatching(array $filters): int
    {
        return $this->call('POST', '/v1/tasks/cancel', (object) $filters)['count'];
    }

    /**
     * Requeues every `dead` task matching the filters (`type`, `queue`; at
     * least one). Needs the `admin` scope.
     *
     * @param array{state?: string, type?: string, queue?: string} $filters
     * @return int how many were requeued
     */
    public function retryMatching(array $filters): int
    {
        return $this->call('POST', '/v1/tasks/retry', (object) $filters)['count'];
    }

    /**
     * Every queue, with its settings and its counts by state.
     *
     * @return list<array<string, mixed>>
     */
    public function queues(): array
    {
        return $this->call('GET', '/v1/queues')['queues'];
    }

    /**
     * Pauses a queue: its tasks wait (running ones go on).
     *
     * @return array<string, mixed> the queue
     */
    public function pauseQueue(string $name): array
    {
        return $this->call('POST', '/v1/queues/' . Servers::segment($name) . '/pause');
    }

    /**
     * Resumes a paused queue.
     *
     * @return array<string, mixed> the queue
     */
    public function resumeQueue(string $name): array
    {
        return $this->call('POST', '/v1/queues/' . Servers::segment($name) . '/resume');
    }

    /**
     * Creates a cron schedule: every time `$cron` fires (5 fields, or 6
     * with seconds first), a task is submitted from `$task`.
     *
     * @param array<string, mixed> $task `type`, `payload` and any option of {@see submit()}
     * @param array{timezone?: string, misfire?: string, catch_up_limit?: int, paused?: bool} $options
     *     `timezone` (IANA, default UTC), `misfire` (`skip`, `fire_once`,
     *     `catch_up`), `catch_up_limit`, `paused`
     * @return array<string, mixed> the schedule, with `next_fire_at`
     * @throws ConflictException when the name exists
     */
    public function createSchedule(string $name, string $cron, array $task, array $options = []): array
    {
        if (!is_string($task['type'] ?? null)) {
            throw new \InvalidArgumentException('the task of a schedule needs a string type');
        }
        $type = $task['type'];
        $payload = array_key_exists('payload', $task) ? $task['payload'] : null;
        unset($task['type'], $task['payload']);
        $body = ['name' => $name, 'cron' => $cron, 'task' => self::submission($type, $payload, $task)] + $options;
        return $this->call('POST', '/v1/schedules', $body);
    }

    /**
     * Every cron schedule, by name.
     *
     * @return list<array<string, mixed>>
     */
    public function schedules(): array
    {
        return $this->call('GET', '/v1/schedules')['schedules'];
    }

    /**
     * One cron schedule.
     *
     * @return array<string, mixed>
     * @throws NotFoundException
     */
    public function schedule(string $name): array
    {
        return $this->call('GET', '/v1/schedules/' . Servers::segment($name));
    }

    /**
     * Deletes a cron schedule; the tasks of its past fires stay.
     *
     * @throws NotFoundException
     */
    public function deleteSchedule(string $name): void
    {
        $this->call('DELETE', '/v1/schedules/' . Servers::segment($name));
    }

    /**
     * The registered workers.
     *
     * @return list<array<string, mixed>>
     */
    public function workers(): array
    {
        return $this->call('GET', '/v1/workers')['workers'];
    }

    /**
     * The server's health (`status`, `role`, `epoch`, `leader_url`, ...).
     *
     * @return array<string, mixed>
     */
    public function health(): array
    {
        return $this->call('GET', '/healthz');
    }

    /**
     * A request, tried again while it was not served (see the class).
     *
     * @param array<string, mixed>|object|null $body
     * @param list<string> $headers
     */
    private function call(string $method, string $path, array|object|null $body = null, ?float $timeout = null, array $headers = [], bool $repeatable = false): mixed
    {
        $giveUp = microtime(true) + $this->retryMs / 1000;
        $delay = 0.1;
        while (true) {
            try {
                return $this->servers->send($method, $path, $body, $timeout, $headers);
            } catch (ConnectionException $e) {
                // A request that reached a server and got no answer may have
                // been acted on: only one that does the same the second time
                // goes again.
                if ($e->wasSent() && !($repeatable || $method === 'GET')) {
                    throw $e;
                }
                $wait = $delay;
            } catch (UnavailableException|RateLimitedException $e) {
                if ($e->getStatus() !== 503 && $e->getStatus() !== 429) {
                    throw $e;
                }
                $wait = max($delay, ($e->getRetryAfterMs() ?? 0) / 1000);
            }
            if (microtime(true) + $wait > $giveUp) {
                throw $e;
            }
            usleep((int) ($wait * 1_000_000));
            $delay = min($delay * 2, 5.0);
        }
    }

    /**
     * The body of one submission.
     *
     * @param array<string, mixed> $options
     * @return array<string, mixed>
     */
    private static function submission(string $type, mixed $payload, array $options): array
    {
        $body = ['type' => $type];
        if ($payload !== null) {
            $body['payload'] = $payload;
        }
        if (array_key_exists('delay', $options)) {
            $delay = $options['delay'];
            unset($options['delay']);
            if ($delay instanceof \DateInterval) {
                $now = new \DateTimeImmutable();
                $delay = (float) $now->add($delay)->format('U.u') - (float) $now->format('U.u');
            }
            if (!is_int($delay) && !is_float($delay)) {
                throw new \InvalidArgumentException('option delay must be a number of seconds or a DateInterval');
            }
            $body['delay_ms'] = (int) round($delay * 1000);
        }
        foreach ($options as $name => $value) {
            $body[$name] = match ($name) {
                'run_at' => $value instanceof \DateTimeInterface
                    ? \DateTimeImmutable::createFromInterface($value)->setTimezone(new \DateTimeZone('UTC'))->format('Y-m-d\TH:i:s.v\Z')
                    : $value,
                'labels', 'backoff' => is_array($value) ? (object) $value : $value,
                'depends_on' => is_array($value) ? array_map(static fn ($id) => is_int($id) ? (string) $id : $id, array_values($value)) : $value,
                default => $value,
            };
        }
        return $body;
    }
}
