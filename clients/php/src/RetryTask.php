<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * Thrown by a handler: this attempt failed, try again after `$delayMs`
 * milliseconds instead of the task's backoff (a rate limit said when, a
 * resource will be back later). The retry spends an attempt: once
 * `max_attempts` are spent the task is `dead`.
 */
class RetryTask extends \Exception
{
    /** The longest delay the server takes: a week. */
    public const MAX_DELAY_MS = 604_800_000;

    private readonly int $delayMs;

    /**
     * @param int $delayMs 0 to 604800000 (a week)
     */
    public function __construct(int $delayMs, string $message = '', ?\Throwable $previous = null)
    {
        if ($delayMs < 0 || $delayMs > self::MAX_DELAY_MS) {
            throw new \InvalidArgumentException("RetryTask delay must be 0 to " . self::MAX_DELAY_MS . " ms, not $delayMs");
        }
        $this->delayMs = $delayMs;
        parent::__construct($message !== '' ? $message : "retry in $delayMs ms", 0, $previous);
    }

    /** How long to wait before the next attempt, in milliseconds. */
    public function getDelayMs(): int
    {
        return $this->delayMs;
    }
}
