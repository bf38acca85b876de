<?php

declare(strict_types=1);

namespace Dispatch\Tests;

use Dispatch\Tests\Support\Server;
use Dispatch\Tests\Support\TestCase;
use Dispatch\Tests\Support\WorkerProcess;

/**
 * The acknowledgement of poll answers (`handout` / `last_handout`), seen
 * through a loopback proxy between the worker and the real server
 * (Support/proxy-router.php under `php -S`) that records what the worker
 * sends and can drop or hold a poll.
 */
final class HandoutTest extends TestCase
{
    /** @var list<WorkerProcess> proxies, each the leader of its process group */
    private array $proxies = [];

    protected function tearDown(): void
    {
        foreach ($this->proxies as $proxy) {
            // The built-in server's own workers go with it.
            @posix_kill(-$proxy->pid, SIGKILL);
            $proxy->kill();
        }
        parent::tearDown();
    }

    /** Starts a proxy to `$server` in `$mode`; answers its URL. */
    private function proxy(Server $server, string $mode): string
    {
        $port = Server::freePort();
        $proxy = $this->process(
            ['setsid', PHP_BINARY, '-S', "127.0.0.1:$port", __DIR__ . '/Support/proxy-router.php'],
            ['PHP_CLI_SERVER_WORKERS' => '4', 'PROXY_UPSTREAM' => $server->url, 'PROXY_DIR' => $this->dir, 'PROXY_MODE' => $mode],
        );
        $this->proxies[] = $proxy;
        $this->eventually(static function () use ($port): bool {
            $socket = @fsockopen('127.0.0.1', $port, $errno, $error, 0.2);
            if ($socket === false) {
                return false;
            }
            fclose($socket);
            return true;
        }, 'the proxy to listen', $proxy);
        return "http://127.0.0.1:$port";
    }

    /** @return list<array<string, mixed>> the polls the proxy saw, in the order they were answered */
    private function polls(): array
    {
        $lines = @file("{$this->dir}/polls.jsonl", FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) ?: [];
        return array_map(static fn (string $line) => json_decode($line, true), $lines);
    }

    /** @return list<string> */
    private static function reported(array $poll): array
    {
        return array_map(static fn ($r) => (string) $r['task_id'], $poll['body']['results'] ?? []);
    }

    public function testATaskWhoseAnswerWasLostGoesBackAndRunsOnceOnTheSameWorker(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $url = $this->proxy($server, 'drop');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2, 'poll_wait_ms' => 2000]);
$worker->register('job', function ($payload, Dispatch\Context $ctx) use ($dir) {
    file_put_contents("$dir/ran-{$ctx->id}-{$ctx->attempt}", '');
    return ['attempt' => $ctx->attempt, 'worker' => $ctx->workerId];
});
$worker->run();
PHP, $url);
        $a = $client->submit('job', 'a');
        $this->eventually(fn () => is_file("{$this->dir}/dropped"), 'the answer handing A to be dropped', $worker);
        // The worker never heard of A: it stays running until the worker
        // acknowledges a later answer.
        self::assertSame('running', $client->get($a['id'])['state']);
        $b = $client->submit('job', 'b');
        $doneB = $this->finished($client, $b['id'], $worker);
        $doneA = $this->finished($client, $a['id'], $worker);
        self::assertSame('succeeded', $doneB['state'], $worker->output());
        self::assertSame('succeeded', $doneA['state'], $worker->output());
        // Given back with no attempt spent, and run once, by the same worker.
        self::assertSame(1, $doneA['result']['attempt'], json_encode($doneA));
        self::assertSame($doneB['result']['worker'], $doneA['result']['worker']);
        $this->assertRunOnce([$a['id'], $b['id']]);

        // A poll is recorded once answered: wait for the acknowledgement.
        $polls = $this->eventually(function () {
            $polls = $this->polls();
            foreach ($polls as $p) {
                if (!empty($p['reply']['tasks']) && !($p['dropped'] ?? false)) {
                    $first = $p['reply']['handout'];
                    $acked = array_filter($polls, static fn ($q) => ($q['body']['last_handout'] ?? null) === $first);
                    return $acked ? $polls : null;
                }
            }
            return null;
        }, 'the acknowledgement to be recorded', $worker);
        $lost = array_values(array_filter($polls, static fn ($p) => $p['dropped'] ?? false));
        self::assertCount(1, $lost);
        $handouts = [];
        $acknowledged = [];
        foreach ($polls as $p) {
            if (!empty($p['reply']['tasks']) && !($p['dropped'] ?? false)) {
                $handouts[] = $p['reply']['handout'];
            }
            if (isset($p['body']['last_handout'])) {
                self::assertArrayHasKey('running', $p['body'], json_encode($p));
                $acknowledged[] = $p['body']['last_handout'];
            }
        }
        self::assertNotEmpty($handouts, 'no answer that handed a task reached the worker');
        self::assertContains($handouts[0], $acknowledged, json_encode($polls));
        self::assertNotContains($lost[0]['reply']['handout'], $acknowledged);
    }

    /**
     * Each of these tasks ran once, as attempt 1 (its handler leaves a mark).
     *
     * @param list<string> $ids
     */
    private function assertRunOnce(array $ids): void
    {
        $runs = array_map('basename', glob("{$this->dir}/ran-*") ?: []);
        sort($runs);
        $expected = array_map(static fn ($id) => "ran-$id-1", $ids);
        sort($expected);
        self::assertSame($expected, $runs, 'each task runs once, as attempt 1');
    }

    public function testAFinishedTaskIsNamedUntilItsReportIsAnswered(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $quick = $client->submit('quick');
        $slow = $client->submit('slow');
        file_put_contents("{$this->dir}/quick-id", $quick['id']);
        $url = $this->proxy($server, 'hold');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2, 'poll_wait_ms' => 2000]);
$worker->register('quick', function ($payload, Dispatch\Context $ctx) use ($dir) {
    file_put_contents("$dir/ran-{$ctx->id}-{$ctx->attempt}", '');
    return $ctx->attempt;
});
// Finishes once the quick task's report is on its way (and held).
$worker->register('slow', function ($payload, Dispatch\Context $ctx) use ($dir) {
    $until = microtime(true) + 60;
    while (!file_exists("$dir/quick-seen") && microtime(true) < $until) {
        usleep(20_000);
        clearstatcache();
    }
    return $ctx->attempt;
});
$worker->run();
PHP, $url);
        $doneQ = $this->finished($client, $quick['id'], $worker);
        $doneS = $this->finished($client, $slow['id'], $worker);
        self::assertSame('succeeded', $doneQ['state'], $worker->output());
        self::assertSame(1, $doneQ['result']);
        self::assertSame('succeeded', $doneS['state'], $worker->output());
        self::assertSame(1, $doneS['result']);
        $this->assertRunOnce([$quick['id']]);
        self::assertFileExists("{$this->dir}/slow-seen");

        $polls = $this->eventually(function () use ($quick, $slow) {
            $polls = $this->polls();
            $q = array_values(array_filter($polls, static fn ($p) => in_array($quick['id'], self::reported($p), true)));
            $s = array_values(array_filter($polls, static fn ($p) => in_array($slow['id'], self::reported($p), true)));
            return $q && $s ? [$q[0], $s[0], $polls] : null;
        }, 'the reports to be recorded', $worker);
        [$carryingQuick, $carryingSlow, $all] = $polls;
        self::assertNotContains($quick['id'], self::reported($carryingSlow));
        // Sent while the quick task's report was unanswered: it names the
        // quick task, and acknowledges the answer that handed the tasks.
        self::assertLessThan($carryingQuick['answered'], $carryingSlow['arrived']);
        self::assertContains($quick['id'], $carryingSlow['body']['running'], json_encode($carryingSlow));
        self::assertArrayHasKey('last_handout', $carryingSlow['body'], json_encode($carryingSlow));
        $handouts = array_map(static fn ($p) => $p['reply']['handout'], array_values(array_filter($all, static fn ($p) => !empty($p['reply']['tasks']))));
        self::assertContains($carryingSlow['body']['last_handout'], $handouts);
    }

    public function testInProcessHeartbeatsNameTheTaskAndAcknowledgeItsAnswer(): void
    {
        $server = $this->server(['--lease-ms', '1500']);
        $client = $this->client($server);
        $url = $this->proxy($server, 'record');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['fork' => false, 'concurrency' => 1]);
$worker->register('long', function ($payload, Dispatch\Context $ctx) {
    $until = microtime(true) + 3;
    while (microtime(true) < $until) {
        $ctx->cancelled();
        usleep(100_000);
    }
    return $ctx->attempt;
});
$worker->run();
PHP, $url);
        $task = $client->submit('long');
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame(1, $done['result']);
        $polls = $this->polls();
        $handing = array_values(array_filter($polls, static fn ($p) => !empty($p['reply']['tasks'])));
        self::assertCount(1, $handing);
        $handout = $handing[0]['reply']['handout'];
        // Heartbeats sent while the handler ran (past the lease).
        // (The poll reporting it is recorded once answered.)
        [$polls, $reports] = $this->eventually(function () use ($task) {
            $polls = $this->polls();
            $reports = array_values(array_filter($polls, static fn ($p) => in_array($task['id'], self::reported($p), true)));
            return $reports ? [$polls, $reports] : null;
        }, 'the report to be recorded', $worker);
        $beats = array_values(array_filter($polls, static fn ($p) => $p['arrived'] > $handing[0]['answered']
            && $p['arrived'] < $reports[0]['arrived'] && $p['body']['max'] === 0));
        self::assertNotEmpty($beats, json_encode($polls, JSON_PRETTY_PRINT));
        foreach ($beats as $beat) {
            self::assertContains($task['id'], $beat['body']['running'], json_encode($beat));
            self::assertSame($handout, $beat['body']['last_handout'] ?? null, json_encode($beat));
        }
    }
}
