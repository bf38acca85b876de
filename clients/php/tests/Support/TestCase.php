<?php

declare(strict_types=1);

namespace Dispatch\Tests\Support;

use Dispatch\Client;

/**
 * A test with a folder of its own, and the servers and processes it
 * started, all stopped and removed at its end, on failure too.
 */
abstract class TestCase extends \PHPUnit\Framework\TestCase
{
    /** Generous bound of every wait: the machine may be loaded. */
    protected const PATIENCE = 60.0;

    protected string $dir;
    /** @var list<Server> */
    private array $servers = [];
    /** @var list<WorkerProcess> */
    private array $processes = [];

    protected function setUp(): void
    {
        $this->dir = Server::tempDir('dispatch-php-test');
    }

    protected function tearDown(): void
    {
        $complaints = [];
        foreach ($this->processes as $process) {
            $process->kill();
            // PHP's own complaints: the library must raise none.
            if (preg_match('/^(PHP )?(Warning|Notice|Deprecated|Fatal error|Parse error):.*$/m', $process->output(), $m)) {
                $complaints[] = $m[0];
            }
        }
        // Handlers write their process ids to pid-*: none may outlive the test.
        foreach (glob($this->dir . '/pid-*') ?: [] as $file) {
            $pid = (int) file_get_contents($file);
            if ($pid > 0) {
                @posix_kill($pid, SIGKILL);
            }
        }
        foreach ($this->servers as $server) {
            $server->stop();
        }
        Server::remove($this->dir);
        self::assertSame([], $complaints, 'PHP complained in a process of the test');
    }

    /** @param list<string> $args */
    protected function server(array $args = []): Server
    {
        $server = Server::start($args);
        $this->servers[] = $server;
        return $server;
    }

    /** Kills a server and starts it again on its port and data. */
    protected function restart(Server $server): Server
    {
        $again = $server->restart();
        $this->servers = array_map(static fn (Server $s) => $s === $server ? $again : $s, $this->servers);
        return $again;
    }

    protected function client(Server|string $server, array $options = []): Client
    {
        return new Client($server instanceof Server ? $server->url : $server, $options);
    }

    /** Runs PHP code (a worker, say) as a process of its own; see {@see WorkerProcess::php()}. */
    protected function php(string $code, Server|string $server, array $env = [], array $phpArgs = []): WorkerProcess
    {
        $process = WorkerProcess::php($code, $this->dir, $server instanceof Server ? $server->url : $server, $env, $phpArgs);
        $this->processes[] = $process;
        return $process;
    }

    /** @param list<string> $command */
    protected function process(array $command, array $env = []): WorkerProcess
    {
        $process = new WorkerProcess($command, $this->dir, $env);
        $this->processes[] = $process;
        return $process;
    }

    /**
     * Waits until `$check` returns something other than null or false, and
     * returns it; fails after PATIENCE seconds.
     */
    protected function eventually(callable $check, string $what, ?WorkerProcess $process = null): mixed
    {
        $deadline = microtime(true) + self::PATIENCE;
        while (true) {
            $value = $check();
            if ($value !== null && $value !== false) {
                return $value;
            }
            if (microtime(true) > $deadline) {
                self::fail("timed out waiting for $what" . ($process ? "\nworker output:\n" . $process->output() : ''));
            }
            usleep(50_000);
        }
    }

    /** Waits for a task to end; returns it. */
    protected function finished(Client $client, string $id, ?WorkerProcess $process = null): array
    {
        $task = $client->wait($id, (int) (self::PATIENCE * 1000));
        self::assertContains($task['state'], ['succeeded', 'dead', 'cancelled'], "task $id did not end: " . json_encode($task) . ($process ? "\nworker output:\n" . $process->output() : ''));
        return $task;
    }

    /** Whether a process of this id exists (and is not a zombie). */
    protected static function alive(int $pid): bool
    {
        $stat = @file_get_contents("/proc/$pid/stat");
        if ($stat === false) {
            return posix_kill($pid, 0);
        }
        // The state follows the command name in parentheses; Z is a zombie.
        $state = substr($stat, strrpos($stat, ')') + 2, 1);
        return $state !== 'Z' && $state !== 'X';
    }
}
