<?php

declare(strict_types=1);

namespace Dispatch\Tests\Support;

/**
 * A PHP program, written for one test, run as a process of its own (as a
 * worker runs in production): signals reach it alone, and its forks stay
 * out of the test runner. Its output goes to a file, for the failure
 * messages.
 */
final class WorkerProcess
{
    /** @var resource|null */
    private $process;
    public readonly int $pid;
    private readonly string $log;
    private ?int $exit = null;

    /**
     * @param list<string> $command the program and its arguments
     * @param array<string, string> $env added to the environment
     */
    public function __construct(array $command, string $dir, array $env = [])
    {
        $this->log = $dir . '/worker-' . bin2hex(random_bytes(3)) . '.log';
        $this->process = proc_open(
            $command,
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $this->log, 'a'], 2 => ['file', $this->log, 'a']],
            $pipes,
            null,
            $env + getenv(),
        );
        if (!is_resource($this->process)) {
            throw new \RuntimeException('cannot start ' . implode(' ', $command));
        }
        $this->pid = proc_get_status($this->process)['pid'];
    }

    /**
     * Runs PHP code with the library loaded; `$dir` (a folder for the
     * test's files) and `$url` (the server) are set for it.
     */
    public static function php(string $code, string $dir, string $url, array $env = [], array $phpArgs = []): self
    {
        $file = $dir . '/program-' . bin2hex(random_bytes(3)) . '.php';
        $autoload = var_export(realpath(__DIR__ . '/../../autoload.php'), true);
        file_put_contents($file, "<?php\ndeclare(strict_types=1);\nrequire $autoload;\n\$dir = getenv('TEST_DIR');\n\$url = getenv('TEST_URL');\n$code\n");
        return new self(array_merge([PHP_BINARY], $phpArgs, [$file]), $dir, ['TEST_DIR' => $dir, 'TEST_URL' => $url] + $env);
    }

    /** Sends a signal to the process. */
    public function signal(int $signal): void
    {
        posix_kill($this->pid, $signal);
    }

    /** Whether the process still runs. */
    public function running(): bool
    {
        if ($this->exit !== null || !is_resource($this->process)) {
            return false;
        }
        $status = proc_get_status($this->process);
        if (!$status['running']) {
            $this->exit = $status['exitcode'];
            return false;
        }
        return true;
    }

    /** Waits for the process to end, for at most `$seconds`; its exit code, or null if it still runs. */
    public function wait(float $seconds): ?int
    {
        $deadline = microtime(true) + $seconds;
        while ($this->running() && microtime(true) < $deadline) {
            usleep(20_000);
        }
        return $this->running() ? null : $this->exit;
    }

    /** What it printed. */
    public function output(): string
    {
        return (string) @file_get_contents($this->log);
    }

    /** Kills it (and the processes of its tasks) if it still runs. */
    public function kill(): void
    {
        if ($this->running()) {
            posix_kill($this->pid, SIGKILL);
            $this->wait(10);
        }
        if (is_resource($this->process)) {
            proc_close($this->process);
            $this->process = null;
        }
    }
}
