<?php

declare(strict_types=1);

namespace Dispatch\Internal;

use Dispatch\Context;
use Dispatch\TaskInterface;

/**
 * A task running in a process of its own: forked from the worker, it runs
 * the handler, writes its report to a socket shared with the worker, and
 * ends. The worker reads the report when the process has ended, and kills
 * the process (with every process it started: it leads a process group)
 * when the task times out or is cancelled.
 *
 * @internal
 */
final class Child
{
    /** Why the worker killed the process, if it did: `timeout`, `cancel`, `stop` or `lost`. */
    public ?string $killed = null;
    private string $buffer = '';

    /**
     * @param resource $socket the worker's end
     * @param array<string, mixed> $task
     */
    private function __construct(
        public readonly int $pid,
        private $socket,
        public readonly array $task,
        public readonly string $id,
        public readonly float $startedAt,
        public readonly ?float $deadline,
    ) {
    }

    /**
     * Forks a process that runs `$handler` on `$task`; null when the fork
     * failed.
     *
     * @param array<string, mixed> $task
     */
    public static function start(TaskInterface|callable $handler, array $task, Context $ctx): ?self
    {
        $pair = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        if ($pair === false) {
            return null;
        }
        $pid = pcntl_fork();
        if ($pid === -1) {
            fclose($pair[0]);
            fclose($pair[1]);
            return null;
        }
        if ($pid === 0) {
            fclose($pair[0]);
            self::main($handler, $task, $ctx, $pair[1]);
        }
        fclose($pair[1]);
        // Both sides set the group, so that killing it works whichever runs first.
        @posix_setpgid($pid, $pid);
        stream_set_blocking($pair[0], false);
        return new self($pid, $pair[0], $task, $ctx->id, $ctx->startedAt, $ctx->deadline);
    }

    /**
     * The forked process: runs the attempt, writes the report, ends.
     *
     * @param array<string, mixed> $task
     * @param resource $socket
     */
    private static function main(TaskInterface|callable $handler, array $task, Context $ctx, $socket): never
    {
        // A group of its own: a terminal's Ctrl-C reaches the worker alone,
        // and a kill of the group reaches what the handler started.
        @posix_setpgid(0, 0);
        // The worker decides when to stop; a SIGTERM sent to every process
        // (systemd's default) lets the task finish while the worker drains.
        pcntl_signal(SIGTERM, static function (): void {
        });
        pcntl_signal(SIGINT, static function (): void {
        });
        pcntl_signal(SIGCHLD, SIG_DFL);
        $reported = false;
        register_shutdown_function(static function () use (&$reported, $socket, $ctx): void {
            if ($reported) {
                return;
            }
            $error = error_get_last();
            $why = $error !== null
                ? sprintf('the handler failed: %s in %s:%d', $error['message'], $error['file'], $error['line'])
                : 'the handler ended its process (exit) before returning';
            self::write($socket, Attempt::failure($ctx->id, $why));
        });
        $report = Attempt::run($handler, $task, $ctx);
        self::write($socket, $report);
        $reported = true;
        while (ob_get_level() > 0) {
            ob_end_flush();
        }
        fflush(STDOUT);
        fflush(STDERR);
        // End without running the destructors and shutdown functions
        // inherited from the worker: they belong to its process (a
        // connection closed here would be closed under it).
        posix_kill(posix_getpid(), SIGKILL);
        exit(0);
    }

    /** @param resource $socket */
    private static function write($socket, string $data): void
    {
        stream_set_blocking($socket, true);
        while ($data !== '') {
            $n = @fwrite($socket, $data);
            if ($n === false || $n === 0) {
                return;
            }
            $data = substr($data, $n);
        }
        fflush($socket);
    }

    /**
     * Reads what the process wrote so far, so that it never blocks on a
     * full socket, and tells whether it ended.
     */
    public function poll(): bool
    {
        $this->read();
        $waited = pcntl_waitpid($this->pid, $status, WNOHANG);
        if ($waited === 0) {
            return false;
        }
        $this->read();
        fclose($this->socket);
        $this->status = $waited === $this->pid ? $status : null;
        return true;
    }

    /** The exit status once ended (null when it could not be read). */
    public ?int $status = null;

    /** The socket, to wait on. @return resource */
    public function socket()
    {
        return $this->socket;
    }

    private function read(): void
    {
        if (!is_resource($this->socket)) {
            return;
        }
        while (($chunk = fread($this->socket, 65536)) !== false && $chunk !== '') {
            $this->buffer .= $chunk;
        }
    }

    /** Kills the process and those it started. */
    public function kill(string $why): void
    {
        $this->killed ??= $why;
        @posix_kill(-$this->pid, SIGKILL);
        @posix_kill($this->pid, SIGKILL);
    }

    /**
     * The report of the ended process: the one it wrote, or a failure
     * saying how it ended without one.
     */
    public function report(): string
    {
        $frame = json_decode($this->buffer);
        if ($frame instanceof \stdClass && ($frame->task_id ?? null) === $this->id) {
            return $this->buffer;
        }
        $how = match (true) {
            $this->status === null => 'ended',
            pcntl_wifexited($this->status) => 'exited with status ' . pcntl_wexitstatus($this->status),
            pcntl_wifsignaled($this->status) => 'was killed by signal ' . pcntl_wtermsig($this->status),
            default => 'ended',
        };
        return Attempt::failure($this->id, "the task's process $how before reporting");
    }

    /** Waits for the killed process to end, for at most `$seconds`. */
    public function reap(float $seconds): void
    {
        $until = microtime(true) + $seconds;
        while (!$this->poll() && microtime(true) < $until) {
            usleep(10_000);
        }
    }
}
