<?php

declare(strict_types=1);

namespace Dispatch\Tests;

use Dispatch\Tests\Support\TestCase;

/** bin/dispatch-worker: the runner of a bootstrap file's handlers. */
final class RunnerTest extends TestCase
{
    private const RUNNER = __DIR__ . '/../bin/dispatch-worker';

    public function testTheRunnerRunsTheHandlersABootstrapFileRegisters(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $echo = $client->submit('echo', ['a' => 1]);
        $upper = $client->submit('upper', ['text' => 'shout']);
        file_put_contents("{$this->dir}/handlers.php", <<<'PHP'
<?php
// $worker is given; handlers may be registered on it, or returned.
$worker->register('upper', fn (array $p) => strtoupper($p['text']));
return ['echo' => fn ($payload) => $payload];
PHP);
        $runner = $this->process([PHP_BINARY, self::RUNNER, '--server', $server->url, '--bootstrap', "{$this->dir}/handlers.php", '--concurrency', '2', '--name', 'runner-1', '--label', 'zone=a']);
        self::assertSame(['a' => 1], $this->finished($client, $echo['id'], $runner)['result'], $runner->output());
        self::assertSame('SHOUT', $this->finished($client, $upper['id'], $runner)['result']);
        $workers = $client->workers();
        self::assertSame('runner-1', $workers[0]['name']);
        self::assertSame(['zone' => 'a'], $workers[0]['labels']);
        self::assertSame(2, $workers[0]['capacity']);
        self::assertEqualsCanonicalizing(['echo', 'upper'], $workers[0]['types']);
        $runner->signal(SIGTERM);
        self::assertSame(0, $runner->wait(self::PATIENCE), $runner->output());
        self::assertSame([], $client->workers());
    }

    public function testTheServerMayComeFromTheEnvironment(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $task = $client->submit('echo', 'hi');
        file_put_contents("{$this->dir}/handlers.php", "<?php return ['echo' => fn (\$p) => \$p];\n");
        $runner = $this->process([PHP_BINARY, self::RUNNER, '-b', "{$this->dir}/handlers.php"], ['DISPATCH_SERVER' => $server->url]);
        self::assertSame('hi', $this->finished($client, $task['id'], $runner)['result'], $runner->output());
    }

    public function testUsageErrors(): void
    {
        $help = $this->process([PHP_BINARY, self::RUNNER, '--help']);
        self::assertSame(0, $help->wait(self::PATIENCE));
        self::assertStringContainsString('--bootstrap', $help->output());

        $missing = $this->process([PHP_BINARY, self::RUNNER, '--server', 'http://127.0.0.1:1']);
        self::assertSame(2, $missing->wait(self::PATIENCE));
        self::assertStringContainsString('--bootstrap FILE is required', $missing->output());

        file_put_contents("{$this->dir}/none.php", "<?php\n");
        $empty = $this->process([PHP_BINARY, self::RUNNER, '--bootstrap', "{$this->dir}/none.php", '--server', 'http://127.0.0.1:1']);
        self::assertSame(2, $empty->wait(self::PATIENCE));
        self::assertStringContainsString('register at least one handler', $empty->output());

        $badUrl = $this->process([PHP_BINARY, self::RUNNER, '--bootstrap', "{$this->dir}/none.php", '--server', 'localhost:7070']);
        self::assertSame(2, $badUrl->wait(self::PATIENCE));
        self::assertStringContainsString('invalid server URL', $badUrl->output());
    }
}
