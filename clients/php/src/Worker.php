<?php

declare(strict_types=1);

namespace Dispatch;

use Dispatch\Internal\Servers;
use Dispatch\Internal\Session;

/**
 * A worker: runs the tasks of the types it registered handlers for, until
 * it is stopped.
 *
 * ```php
 * $worker = new Dispatch\Worker('http://127.0.0.1:7070', ['name' => 'php-1', 'concurrency' => 4]);
 * $worker->register('email.send', new SendEmail());            // a TaskInterface
 * $worker->register('echo', fn (mixed $payload, Dispatch\Context $ctx) => $payload);
 * $worker->run();                                             // until SIGTERM, SIGINT or stop()
 * ```
 *
 * It speaks the HTTP worker protocol (docs/workers.md): it registers, keeps
 * a long poll open for as many tasks as it has free slots, reports results
 * on its polls, renews its lease, and leaves on the way out.
 *
 * **Concurrency.** With the pcntl and posix extensions (PHP's CLI has them
 * on Linux and macOS), every task runs in a process of its own, forked
 * from the worker: up to `concurrency` at once. A task that runs past its
 * `timeout_ms`, or that the scheduler cancels, is killed (SIGKILL, with
 * every process it started) and reported. Without them (or with
 * `'fork' => false`) tasks run one at a time in the worker's own process:
 * nothing can interrupt a handler there, so a handler that runs longer
 * than a few seconds should call `$ctx->cancelled()` now and then, which
 * renews the lease and says whether to stop.
 *
 * **Stopping.** SIGTERM or SIGINT (with pcntl), or `stop()` from a handler
 * or a signal handler of yours: it takes no more tasks, lets the running
 * ones finish (for `grace` seconds) and reports them, then leaves the
 * scheduler. A second signal, or the end of the grace, kills the tasks
 * still running; leaving gives them back to the scheduler, which requeues
 * them without counting the attempt.
 */
final class Worker
{
    private const OPTIONS = ['name', 'concurrency', 'labels', 'token', 'ca', 'timeout', 'weight', 'poll_wait_ms', 'grace', 'fork', 'logger'];

    private readonly Servers $servers;
    private readonly string $name;
    private readonly int $concurrency;
    /** @var array<string, string> */
    private readonly array $labels;
    private readonly ?int $weight;
    private readonly int $pollWaitMs;
    private readonly bool $fork;
    private readonly ?float $grace;
    private readonly \Closure $log;
    /** @var array<string, TaskInterface|callable> */
    private array $handlers = [];
    /** 0 running, 1 draining, 2 killing the running tasks. */
    private int $stopping = 0;
    private bool $running = false;
    private ?string $id = null;

    /**
     * @param string $url `http://HOST:PORT` or `https://HOST:PORT`, or the
     *     replicas of a cluster, comma-separated
     * @param array<string, mixed> $options
     *     - `name`: shown in `dispatch workers` (default `php-HOST-PID`)
     *     - `concurrency`: tasks at once, 1 to 10000 (default 1)
     *     - `labels`: name => value, for tasks that require labels
     *     - `token`: bearer token (scope `work`), for a server started with `--tokens`
     *     - `ca`: a PEM file of the certificate authorities of an `https://` server
     *     - `timeout`: seconds a request may take besides a poll's wait (default 30)
     *     - `weight`: 1 to 1000, for `weighted_round_robin`
     *     - `poll_wait_ms`: how long a poll waits for work (default 20000;
     *       the server holds it at most half its lease)
     *     - `grace`: seconds a stop lets the running tasks finish (default
     *       30; false for no limit); those still running then are killed
     *       and given back to the scheduler
     *     - `fork`: run each task in a process of its own (default: when
     *       pcntl and posix are there)
     *     - `logger`: `callable(string $level, string $message)`, or an
     *       object with PSR-3's `log($level, $message, $context)`; default:
     *       lines on STDERR, `debug` left out
     */
    public function __construct(string $url, array $options = [])
    {
        if ($unknown = array_diff(array_keys($options), self::OPTIONS)) {
            throw new \InvalidArgumentException('unknown option ' . implode(', ', $unknown) . ' (known: ' . implode(', ', self::OPTIONS) . ')');
        }
        $this->servers = new Servers($url, array_intersect_key($options, ['token' => 1, 'ca' => 1, 'timeout' => 1]));
        $this->log = self::logger($options['logger'] ?? null);

        $name = $options['name'] ?? 'php-' . (gethostname() ?: 'host') . '-' . getmypid();
        if (!is_string($name) || $name === '') {
            throw new \InvalidArgumentException('option name must be a non-empty string');
        }
        $this->name = $name;

        $labels = $options['labels'] ?? [];
        if (!is_array($labels)) {
            throw new \InvalidArgumentException('option labels must be an array of name => value');
        }
        $this->labels = array_map('strval', $labels);

        $weight = $options['weight'] ?? null;
        if ($weight !== null && !is_int($weight)) {
            throw new \InvalidArgumentException('option weight must be an integer');
        }
        $this->weight = $weight;

        $wait = $options['poll_wait_ms'] ?? 20_000;
        if (!is_int($wait) || $wait < 0 || $wait > 60_000) {
            throw new \InvalidArgumentException('option poll_wait_ms must be an integer from 0 to 60000');
        }
        $this->pollWaitMs = $wait;

        $grace = $options['grace'] ?? 30;
        if ($grace !== false && ((!is_int($grace) && !is_float($grace)) || $grace < 0)) {
            throw new \InvalidArgumentException('option grace must be a non-negative number of seconds, or false for no limit');
        }
        $this->grace = $grace === false ? null : (float) $grace;

        $canFork = function_exists('pcntl_fork') && function_exists('posix_kill');
        $fork = $options['fork'] ?? $canFork;
        if (!is_bool($fork)) {
            throw new \InvalidArgumentException('option fork must be a boolean');
        }
        if ($fork && !$canFork) {
            throw new \InvalidArgumentException('option fork needs the pcntl and posix extensions');
        }
        $this->fork = $fork;

        $concurrency = $options['concurrency'] ?? 1;
        if (!is_int($concurrency) || $concurrency < 1 || $concurrency > 10_000) {
            throw new \InvalidArgumentException('option concurrency must be an integer from 1 to 10000');
        }
        if ($concurrency > 1 && !$fork) {
            ($this->log)('warning', 'tasks run one at a time: running several at once needs the pcntl and posix extensions (and fork on)');
            $concurrency = 1;
        }
        $this->concurrency = $concurrency;
    }

    /**
     * Runs `$handler` for the tasks of `$type`.
     *
     * A {@see TaskInterface} gets the payload as an array; a callable gets
     * it as decoded (any JSON value) and the {@see Context}:
     * `fn (mixed $payload, Context $ctx): mixed`. Either returns the result
     * or throws ({@see RetryTask}, {@see AbortTask}, or anything else for a
     * retry with the task's backoff).
     */
    public function register(string $type, TaskInterface|callable $handler): self
    {
        if (!preg_match('/^[A-Za-z0-9._:-]{1,128}$/', $type)) {
            throw new \InvalidArgumentException("invalid task type \"$type\": 1 to 128 of A-Z a-z 0-9 . _ : -");
        }
        if ($this->running) {
            throw new \LogicException('register handlers before run()');
        }
        $this->handlers[$type] = $handler;
        return $this;
    }

    /**
     * Runs until SIGTERM or SIGINT (with pcntl) or {@see stop()}: registers,
     * runs tasks, and on the way out lets the running tasks finish, reports
     * them and leaves the scheduler. A lost lease (the worker was silent
     * too long) registers it again. Network errors and unavailable servers
     * are retried with a backoff.
     *
     * @throws ApiException when the server refuses the registration (a bad
     *     token, invalid labels): retrying would not help
     */
    public function run(): void
    {
        if (!$this->handlers) {
            throw new \LogicException('register at least one handler before run()');
        }
        $this->running = true;
        $restore = $this->trapSignals();
        try {
            while ($this->stopping === 0) {
                $reply = $this->enroll();
                if ($reply === null) {
                    break;
                }
                $this->id = (string) $reply['id'];
                $leaseMs = (int) ($reply['lease_ms'] ?? 10_000);
                ($this->log)('info', sprintf('worker %s registered as %s: %s, %d at once', $this->name, $this->id, implode(', ', array_keys($this->handlers)), $this->concurrency));
                $session = new Session(
                    $this->servers,
                    $this->id,
                    $leaseMs,
                    (int) ($reply['heartbeat_ms'] ?? intdiv($leaseMs, 3)),
                    $this->concurrency,
                    $this->pollWaitMs,
                    $this->fork,
                    $this->grace,
                    $this->handlers,
                    fn (): int => $this->stopping,
                    $this->log,
                );
                if ($session->run() === 'stopped') {
                    $this->leave();
                    break;
                }
            }
        } finally {
            $restore();
            $this->running = false;
            $this->id = null;
            $this->stopping = 0;
        }
    }

    /**
     * Asks {@see run()} to return: no more tasks are taken, the running
     * ones finish (for `grace` seconds) and are reported, then the worker
     * leaves. Safe to call from a handler (in-process) or a signal
     * handler. A second call kills the running tasks, which leaving gives
     * back.
     */
    public function stop(): void
    {
        $this->stopping = min(2, $this->stopping + 1);
    }

    /** The id the scheduler gave this worker while it runs. */
    public function id(): ?string
    {
        return $this->id;
    }

    /**
     * Registers with the scheduler, trying again while it cannot be reached;
     * null when stopped meanwhile.
     *
     * @return array<string, mixed>|null
     */
    private function enroll(): ?array
    {
        $body = [
            'name' => $this->name,
            'types' => array_map('strval', array_keys($this->handlers)),
            'labels' => (object) $this->labels,
            'capacity' => $this->concurrency,
        ];
        if ($this->weight !== null) {
            $body['weight'] = $this->weight;
        }
        $backoff = 0.1;
        while ($this->stopping === 0) {
            try {
                return $this->servers->send('POST', '/v1/workers', $body);
            } catch (ApiException $e) {
                if ($e->getStatus() < 500 && $e->getStatus() !== 429) {
                    throw $e;
                }
                $wait = max($backoff, ($e->getRetryAfterMs() ?? 0) / 1000);
                ($this->log)('warning', sprintf('cannot register: %s; trying again in %.1f s', $e->getMessage(), $wait));
            } catch (ConnectionException $e) {
                $wait = $backoff;
                ($this->log)('warning', sprintf('cannot register: %s; trying again in %.1f s', $e->getMessage(), $wait));
            }
            $until = microtime(true) + $wait;
            while ($this->stopping === 0 && microtime(true) < $until) {
                usleep(50_000);
            }
            $backoff = min($backoff * 2, 5.0);
        }
        return null;
    }

    /** Leaves the scheduler: `DELETE /v1/workers/{id}`. */
    private function leave(): void
    {
        try {
            $this->servers->send('DELETE', '/v1/workers/' . Servers::segment((string) $this->id));
            ($this->log)('info', "worker {$this->id} left");
        } catch (NotFoundException) {
            ($this->log)('info', "worker {$this->id} left (its lease had already expired)");
        } catch (DispatchException $e) {
            ($this->log)('warning', 'could not leave cleanly (the lease will expire): ' . $e->getMessage());
        }
    }

    /**
     * Stops on SIGTERM and SIGINT while running, when pcntl is there;
     * returns what puts the previous handlers back.
     *
     * @return \Closure(): void
     */
    private function trapSignals(): \Closure
    {
        if (!function_exists('pcntl_signal') || !function_exists('pcntl_async_signals')) {
            return static function (): void {
            };
        }
        $async = pcntl_async_signals(true);
        $previous = [];
        foreach ([SIGTERM, SIGINT] as $signal) {
            $previous[$signal] = pcntl_signal_get_handler($signal);
            pcntl_signal($signal, function (int $signal): void {
                $this->stop();
                ($this->log)('info', $this->stopping === 1
                    ? 'stopping: finishing the running tasks (signal again to stop them now)'
                    : 'stopping now: killing the running tasks, to be given back');
            });
        }
        return static function () use ($async, $previous): void {
            foreach ($previous as $signal => $handler) {
                pcntl_signal($signal, $handler);
            }
            pcntl_async_signals($async);
        };
    }

    /**
     * The log function for the `logger` option.
     *
     * @return \Closure(string, string): void
     */
    private static function logger(mixed $logger): \Closure
    {
        if ($logger === null) {
            return static function (string $level, string $message): void {
                if ($level !== 'debug') {
                    fwrite(STDERR, gmdate('Y-m-d\TH:i:s\Z') . " dispatch-worker $level: $message\n");
                }
            };
        }
        if (is_object($logger) && method_exists($logger, 'log')) {
            return static function (string $level, string $message) use ($logger): void {
                $logger->log($level, $message, []);
            };
        }
        if (is_callable($logger)) {
            return \Closure::fromCallable($logger);
        }
        throw new \InvalidArgumentException('option logger must be a callable or an object with a log method');
    }
}
