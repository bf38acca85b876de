<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * What a handler knows about the attempt it runs: passed as the second
 * argument to a callable handler, and to a {@see TaskInterface} whose
 * `execute` declares a second parameter.
 */
final class Context
{
    /** When this attempt must end (Unix time in seconds, with fractions), or null without `timeout_ms`. */
    public readonly ?float $deadline;

    /**
     * @param array<string, mixed> $task the task as the poll handed it over
     * @param (\Closure(): bool)|null $probe answers whether the scheduler
     *     asked to stop this task (in-process runs; renews the lease when due)
     */
    public function __construct(
        public readonly string $id,
        public readonly string $type,
        public readonly string $queue,
        public readonly int $attempt,
        public readonly int $maxAttempts,
        public readonly ?int $timeoutMs,
        public readonly int $priority,
        public readonly ?int $shardIndex,
        public readonly ?int $shardTotal,
        public readonly string $workerId,
        public readonly float $startedAt,
        private readonly ?\Closure $probe = null,
    ) {
        $this->deadline = $timeoutMs === null ? null : $startedAt + $timeoutMs / 1000;
    }

    /**
     * The context of a task as a poll reply lists it.
     *
     * @param array<string, mixed> $task
     * @param (\Closure(): bool)|null $probe
     */
    public static function fromTask(array $task, string $workerId, float $startedAt, ?\Closure $probe = null): self
    {
        $int = static fn (string $k): ?int => isset($task[$k]) && is_int($task[$k]) ? $task[$k] : null;
        return new self(
            (string) ($task['id'] ?? ''),
            (string) ($task['type'] ?? ''),
            (string) ($task['queue'] ?? 'default'),
            $int('attempt') ?? 1,
            $int('max_attempts') ?? 1,
            $int('timeout_ms'),
            $int('priority') ?? 0,
            $int('shard_index'),
            $int('shard_total'),
            $workerId,
            $startedAt,
            $probe,
        );
    }

    /** Whether this is the last attempt: failing it makes the task `dead`. */
    public function isLastAttempt(): bool
    {
        return $this->attempt >= $this->maxAttempts;
    }

    /** Milliseconds left before the task's `timeout_ms` runs out, or null without one. */
    public function remainingMs(): ?int
    {
        return $this->deadline === null ? null : max(0, (int) (($this->deadline - microtime(true)) * 1000));
    }

    /**
     * Whether the scheduler asked to stop this task (a client cancelled it,
     * or it ran past its `timeout_ms`). A handler running in a process of
     * its own is killed instead, so there this is always false. A handler
     * running in the worker's process (without pcntl, or with
     * `'fork' => false`) should call it now and then during long work: it
     * also renews the worker's lease, which nothing else can do while the
     * handler runs.
     */
    public function cancelled(): bool
    {
        return $this->probe !== null && ($this->probe)();
    }
}
