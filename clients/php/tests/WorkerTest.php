<?php

declare(strict_types=1);

namespace Dispatch\Tests;

use Dispatch\ForbiddenException;
use Dispatch\Tests\Support\Server;
use Dispatch\Tests\Support\TestCase;
use Dispatch\UnauthorizedException;
use Dispatch\ValidationException;
use Dispatch\Worker;

/**
 * Workers end to end: each runs as a process of its own against a real
 * server, with handlers that leave files in the test's folder (their
 * process ids, when they started and ended) for the assertions.
 */
final class WorkerTest extends TestCase
{
    public function testTheSeedExampleRunsAsWritten(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $task = $client->submit('email.send', ['to' => 'ada@example.com']);
        $code = <<<'PHP'
class SendEmail implements Dispatch\TaskInterface { public function execute(array $params): mixed { /* ... */ return ['sent' => true]; } }
$worker = new Dispatch\Worker('http://127.0.0.1:7070', ['name' => 'php-1', 'concurrency' => 4]);
$worker->register('email.send', new SendEmail());
$worker->run();
PHP;
        $worker = $this->php(str_replace('http://127.0.0.1:7070', $server->url, $code), $server);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame(['sent' => true], $done['result']);
        $registered = $client->workers();
        self::assertSame('php-1', $registered[0]['name']);
        self::assertSame(4, $registered[0]['capacity']);
    }

    public function testTasksRunConcurrentlyEachInAProcessOfItsOwn(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $ids = [];
        for ($i = 0; $i < 8; $i++) {
            $ids[] = $client->submit('work.slow', ['i' => $i])['id'];
        }
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 4]);
$worker->register('work.slow', function (array $payload, Dispatch\Context $ctx) use ($dir) {
    $start = microtime(true);
    usleep(800_000);
    file_put_contents("$dir/span-{$ctx->id}", json_encode([$start, microtime(true), getmypid()]));
    return ['i' => $payload['i'], 'attempt' => $ctx->attempt, 'type' => $ctx->type];
});
$worker->run();
PHP, $server);
        $spans = [];
        foreach ($ids as $n => $id) {
            $done = $this->finished($client, $id, $worker);
            self::assertSame('succeeded', $done['state'], $worker->output());
            self::assertSame(['i' => $n, 'attempt' => 1, 'type' => 'work.slow'], $done['result']);
            $spans[] = json_decode(file_get_contents("{$this->dir}/span-$id"), true);
        }
        // The most tasks running at one moment: at a task's start, count the
        // tasks that started before and had not ended.
        $most = 0;
        foreach ($spans as [$start]) {
            $most = max($most, count(array_filter($spans, static fn ($s) => $s[0] <= $start && $s[1] > $start)));
        }
        self::assertGreaterThan(1, $most, 'no two tasks ever ran at once');
        self::assertLessThanOrEqual(4, $most, 'more tasks ran at once than the concurrency');
        $pids = array_unique(array_column($spans, 2));
        self::assertCount(8, $pids, 'each task runs in a process of its own');
        self::assertNotContains($worker->pid, $pids);
    }

    public function testAbortTaskEndsTheTaskWithoutRetryAndOtherErrorsRetry(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $abort = $client->submit('fail.abort', ['why' => 'no such user'], ['max_attempts' => 5]);
        $boom = $client->submit('fail.boom', null, ['max_attempts' => 2, 'backoff' => ['initial_ms' => 10, 'max_ms' => 10]]);
        $later = $client->submit('fail.later', null, ['max_attempts' => 1]);
        $worker = $this->php(<<<'PHP'
final class Refuse implements Dispatch\TaskInterface
{
    public function execute(array $params): mixed
    {
        throw new Dispatch\AbortTask($params['why']);
    }
}
$worker = new Dispatch\Worker($url, ['concurrency' => 2]);
$worker->register('fail.abort', new Refuse());
$worker->register('fail.boom', fn () => throw new RuntimeException('boom'));
$worker->register('fail.later', fn () => throw new Dispatch\RetryTask(600_000, 'rate limited'));
$worker->run();
PHP, $server);
        $dead = $this->finished($client, $abort['id'], $worker);
        self::assertSame('dead', $dead['state']);
        self::assertSame(1, $dead['attempts'], 'an aborted task is not retried');
        self::assertSame('no such user', $dead['error']);
        $failed = $this->finished($client, $boom['id'], $worker);
        self::assertSame('dead', $failed['state']);
        self::assertSame(2, $failed['attempts'], 'a failed attempt is retried while attempts are left');
        self::assertSame('RuntimeException: boom', $failed['error']);
        // A retry asked for with no attempt left: dead, with its message.
        $spent = $this->finished($client, $later['id'], $worker);
        self::assertSame('dead', $spent['state']);
        self::assertSame('rate limited', $spent['error']);
    }

    public function testAHandlerThatExitsOrDiesFailsItsTaskOnly(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $exit = $client->submit('exit', null, ['max_attempts' => 1]);
        $fatal = $client->submit('fatal', null, ['max_attempts' => 1]);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2]);
$worker->register('exit', function () { exit(3); });
$worker->register('fatal', function () { ini_set('memory_limit', '16M'); return strlen(str_repeat('x', 64 << 20)); });
$worker->register('echo', fn ($p) => $p);
$worker->run();
PHP, $server, [], ['-d', 'display_errors=0', '-d', 'log_errors=0']);
        $exited = $this->finished($client, $exit['id'], $worker);
        self::assertSame('dead', $exited['state']);
        self::assertStringContainsString('exit', $exited['error']);
        $died = $this->finished($client, $fatal['id'], $worker);
        self::assertSame('dead', $died['state']);
        self::assertStringContainsString('Allowed memory size', $died['error']);
        // The worker goes on.
        $after = $client->submit('echo', 'still here');
        self::assertSame('still here', $this->finished($client, $after['id'], $worker)['result'], $worker->output());
    }

    public function testRetryTaskRetriesAfterItsDelay(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $task = $client->submit('flaky', null, ['max_attempts' => 3]);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url);
$worker->register('flaky', function ($payload, Dispatch\Context $ctx) use ($dir) {
    file_put_contents("$dir/attempt-{$ctx->attempt}", (string) microtime(true));
    if ($ctx->attempt === 1) {
        throw new Dispatch\RetryTask(1500, 'rate limited');
    }
    return 'done on attempt ' . $ctx->attempt;
});
$worker->run();
PHP, $server);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame('done on attempt 2', $done['result']);
        $gap = (float) file_get_contents("{$this->dir}/attempt-2") - (float) file_get_contents("{$this->dir}/attempt-1");
        self::assertGreaterThanOrEqual(1.4, $gap, 'the retry came before its delay');
    }

    public function testATaskPastItsTimeoutIsKilledAndReported(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $task = $client->submit('hang', null, ['timeout_ms' => 1500, 'max_attempts' => 1]);
        $worker = $this->php(self::HANG, $server);
        $pid = (int) $this->eventually(fn () => @file_get_contents("{$this->dir}/pid-{$task['id']}"), 'the handler to start', $worker);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('dead', $done['state']);
        self::assertStringContainsString('timeout', $done['error']);
        $this->eventually(fn () => !self::alive($pid), "the handler's process $pid to be killed", $worker);
        self::assertFileDoesNotExist("{$this->dir}/finished-{$task['id']}");
        // The slot is free again.
        $next = $client->submit('hang', ['quick' => true]);
        self::assertSame('succeeded', $this->finished($client, $next['id'], $worker)['state']);
    }

    public function testACancelledTaskIsKilled(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $task = $client->submit('hang');
        $worker = $this->php(self::HANG, $server);
        $pid = (int) $this->eventually(fn () => @file_get_contents("{$this->dir}/pid-{$task['id']}"), 'the handler to start', $worker);
        self::assertTrue(self::alive($pid));
        self::assertSame('cancelled', $client->cancel($task['id'])['state']);
        $this->eventually(fn () => !self::alive($pid), "the handler's process $pid to be killed", $worker);
        self::assertFileDoesNotExist("{$this->dir}/finished-{$task['id']}");
        self::assertSame('cancelled', $client->get($task['id'])['state']);
        $next = $client->submit('hang', ['quick' => true]);
        self::assertSame('succeeded', $this->finished($client, $next['id'], $worker)['state'], $worker->output());
    }

    public function testSigtermFinishesTheRunningTaskTakesNoOtherAndLeaves(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $first = $client->submit('slow');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 1]);
$worker->register('slow', function ($payload, Dispatch\Context $ctx) use ($dir) {
    touch("$dir/started-{$ctx->id}");
    sleep(2);
    touch("$dir/finished-{$ctx->id}");
    return 'finished';
});
$worker->run();
echo "run returned\n";
PHP, $server);
        $this->eventually(fn () => is_file("{$this->dir}/started-{$first['id']}"), 'the task to start', $worker);
        $second = $client->submit('slow');
        $worker->signal(SIGTERM);
        self::assertSame(0, $worker->wait(self::PATIENCE), 'the worker did not exit: ' . $worker->output());
        self::assertStringContainsString('run returned', $worker->output());
        $done = $client->get($first['id']);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame('finished', $done['result']);
        self::assertFileExists("{$this->dir}/finished-{$first['id']}");
        self::assertFileDoesNotExist("{$this->dir}/started-{$second['id']}");
        self::assertSame('queued', $client->get($second['id'])['state']);
        self::assertSame([], $client->workers(), 'the worker did not leave');
    }

    public function testASecondSignalStopsTheRunningTasks(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $task = $client->submit('hang', null, ['max_attempts' => 3]);
        $worker = $this->php(self::HANG, $server);
        $pid = (int) $this->eventually(fn () => @file_get_contents("{$this->dir}/pid-{$task['id']}"), 'the handler to start', $worker);
        $worker->signal(SIGINT);
        $this->eventually(fn () => str_contains($worker->output(), 'stopping'), 'the worker to hear the signal', $worker);
        $worker->signal(SIGINT);
        self::assertSame(0, $worker->wait(self::PATIENCE), 'the worker did not exit: ' . $worker->output());
        self::assertFalse(self::alive($pid), 'the running task was not stopped');
        $t = $client->get($task['id']);
        self::assertSame('queued', $t['state'], 'the task was not given back: ' . json_encode($t));
        self::assertSame([], $client->workers());
    }

    public function testTasksStillRunningAfterTheGraceAreGivenBack(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $slow = $client->submit('hang', null, ['max_attempts' => 3]);
        $quick = $client->submit('slow');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2, 'grace' => 2]);
$worker->register('hang', function ($payload, Dispatch\Context $ctx) use ($dir) {
    file_put_contents("$dir/pid-{$ctx->id}", (string) getmypid());
    sleep(60);
    return 'slept';
});
$worker->register('slow', function ($payload, Dispatch\Context $ctx) use ($dir) {
    touch("$dir/started-{$ctx->id}");
    usleep(500_000);
    return 'in time';
});
$worker->run();
PHP, $server);
        $pid = (int) $this->eventually(fn () => @file_get_contents("{$this->dir}/pid-{$slow['id']}"), 'the slow task to start', $worker);
        $this->eventually(fn () => is_file("{$this->dir}/started-{$quick['id']}"), 'the quick task to start', $worker);
        $worker->signal(SIGTERM);
        self::assertSame(0, $worker->wait(self::PATIENCE), 'the worker did not exit: ' . $worker->output());
        self::assertStringContainsString('grace', $worker->output());
        self::assertFalse(self::alive($pid), 'the task past the grace was not stopped');
        self::assertSame('queued', $client->get($slow['id'])['state']);
        $done = $client->get($quick['id']);
        self::assertSame('succeeded', $done['state'], 'the task that ended within the grace was not reported');
        self::assertSame('in time', $done['result']);
    }

    public function testHeartbeatsKeepALongTaskPastTheLease(): void
    {
        $server = $this->server(['--lease-ms', '1500']);
        $client = $this->client($server);
        $task = $client->submit('long');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url);
$worker->register('long', function () { sleep(4); return 'kept'; });
$worker->run();
PHP, $server);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame('kept', $done['result']);
        self::assertSame(1, $done['attempts'], 'the lease was lost during the task: ' . $worker->output());
    }

    public function testADeadFirstServerIsPassedOver(): void
    {
        $server = $this->server();
        $dead = 'http://127.0.0.1:' . Server::freePort();
        $client = $this->client("$dead,{$server->url}");
        $task = $client->submit('echo', ['hello' => 'world']);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker(getenv('TEST_URLS'));
$worker->register('echo', fn ($payload) => $payload);
$worker->run();
PHP, $server, ['TEST_URLS' => "$dead,{$server->url}"]);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame(['hello' => 'world'], $done['result']);
    }

    public function testAWorkerRidesOutAServerRestart(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2]);
$worker->register('echo', fn ($payload) => $payload);
$worker->run();
PHP, $server);
        $first = $client->submit('echo', 1);
        self::assertSame(1, $this->finished($client, $first['id'], $worker)['result']);
        $server = $this->restart($server);
        $second = $client->submit('echo', 2);
        $done = $this->finished($client, $second['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame(2, $done['result']);
        self::assertStringContainsString('trying again', $worker->output());
        self::assertTrue($worker->running());
    }

    public function testAResultTheServerRefusesFailsItsTaskAlone(): void
    {
        $server = $this->server(['--max-body-bytes', '4096']);
        $client = $this->client($server);
        $big = $client->submit('size', ['bytes' => 10_000], ['max_attempts' => 1]);
        $small = $client->submit('size', ['bytes' => 10], ['max_attempts' => 1]);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2]);
$worker->register('size', fn (array $p) => str_repeat('x', $p['bytes']));
$worker->run();
PHP, $server);
        $done = $this->finished($client, $small['id'], $worker);
        self::assertSame(str_repeat('x', 10), $done['result'], $worker->output());
        $refused = $this->finished($client, $big['id'], $worker);
        self::assertSame('dead', $refused['state'], $worker->output());
        self::assertStringContainsString('the server refused the result', $refused['error']);
        self::assertStringContainsString('too large', $refused['error']);
    }

    public function testTokens(): void
    {
        $file = "{$this->dir}/tokens";
        $submit = Server::createToken($file, 'submit', 'client');
        $work = Server::createToken($file, 'work', 'workers');
        $server = $this->server(['--tokens', $file]);
        $client = $this->client($server, ['token' => $submit]);
        $task = $client->submit('echo', [1, 2, 3]);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['token' => getenv('TEST_TOKEN')]);
$worker->register('echo', fn ($payload) => $payload);
$worker->run();
PHP, $server, ['TEST_TOKEN' => $work]);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame([1, 2, 3], $done['result']);

        try {
            $this->client($server)->submit('echo');
            self::fail('a submission without a token was accepted');
        } catch (UnauthorizedException $e) {
            self::assertSame(401, $e->getStatus());
        }
        $quiet = ['logger' => static function (): void {
        }];
        try {
            (new Worker($server->url, ['token' => $submit] + $quiet))->register('echo', fn ($p) => $p)->run();
            self::fail('a worker with a submit token registered');
        } catch (ForbiddenException $e) {
            self::assertSame(403, $e->getStatus());
            self::assertStringContainsString('work', $e->getDetail());
        }
        try {
            (new Worker($server->url, $quiet))->register('echo', fn ($p) => $p)->run();
            self::fail('a worker without a token registered');
        } catch (UnauthorizedException $e) {
            self::assertSame(401, $e->getStatus());
        }
    }

    public function testARefusedRegistrationRaisesTheProblem(): void
    {
        $server = $this->server();
        $worker = new Worker($server->url, ['labels' => [str_repeat('x', 300) => 'v'], 'logger' => static function (): void {
        }]);
        $worker->register('echo', fn ($p) => $p);
        try {
            $worker->run();
            self::fail('a label name of 300 bytes was accepted');
        } catch (ValidationException $e) {
            self::assertSame(422, $e->getStatus());
            self::assertStringStartsWith('labels', (string) $e->getField());
        }
    }

    public function testOptionsAndTypesAreChecked(): void
    {
        try {
            new Worker('http://127.0.0.1:7070', ['concurency' => 4]);
            self::fail('a misspelt option was accepted');
        } catch (\InvalidArgumentException $e) {
            self::assertStringContainsString('concurency', $e->getMessage());
        }
        $this->expectException(\InvalidArgumentException::class);
        (new Worker('http://127.0.0.1:7070'))->register('no spaces', fn () => null);
    }

    public function testInProcessHandlersRenewTheLeaseAndHearCancellation(): void
    {
        $server = $this->server(['--lease-ms', '1500']);
        $client = $this->client($server);
        $quick = $client->submit('where');
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['fork' => false, 'concurrency' => 1]);
$worker->register('where', fn () => getmypid());
$worker->register('wait.cancel', function ($payload, Dispatch\Context $ctx) use ($dir) {
    touch("$dir/started-{$ctx->id}");
    $until = microtime(true) + 60;
    while (microtime(true) < $until) {
        if ($ctx->cancelled()) {
            touch("$dir/saw-cancel-{$ctx->id}");
            return 'stopped';
        }
        usleep(100_000);
    }
    return 'never cancelled';
});
$worker->run();
PHP, $server);
        $done = $this->finished($client, $quick['id'], $worker);
        self::assertSame($worker->pid, $done['result'], 'the task did not run in the worker process');

        $task = $client->submit('wait.cancel');
        $this->eventually(fn () => is_file("{$this->dir}/started-{$task['id']}"), 'the task to start', $worker);
        // Past the lease: cancelled() renewed it.
        sleep(3);
        self::assertSame('running', $client->get($task['id'])['state'], $worker->output());
        self::assertSame(1, $client->get($task['id'])['attempts']);
        $client->cancel($task['id']);
        $this->eventually(fn () => is_file("{$this->dir}/saw-cancel-{$task['id']}"), 'the handler to see the cancellation', $worker);
        self::assertSame('cancelled', $client->get($task['id'])['state']);
    }

    public function testWithoutPcntlTasksRunOneAtATimeInTheWorkersProcess(): void
    {
        $server = $this->server();
        $client = $this->client($server);
        $first = $client->submit('where');
        $worker = $this->php(<<<'PHP'
echo function_exists('pcntl_fork') || function_exists('pcntl_signal') ? "pcntl is there\n" : "no pcntl\n";
$worker = new Dispatch\Worker($url, ['concurrency' => 4]);
$worker->register('where', fn () => getmypid());
$worker->register('stop', function () use ($worker) {
    $worker->stop();
    return 'stopping';
});
$worker->run();
echo "run returned\n";
PHP, $server, [], ['-d', 'disable_functions=pcntl_fork,pcntl_signal,pcntl_async_signals,pcntl_signal_get_handler,posix_kill']);
        $done = $this->finished($client, $first['id'], $worker);
        self::assertSame($worker->pid, $done['result'], $worker->output());
        self::assertStringContainsString('no pcntl', $worker->output());
        self::assertStringContainsString('one at a time', $worker->output());
        self::assertSame(1, $client->workers()[0]['capacity']);
        // Without signals, stop() from a handler ends run().
        $stop = $client->submit('stop');
        self::assertSame(0, $worker->wait(self::PATIENCE), $worker->output());
        self::assertSame('stopping', $client->get($stop['id'])['result']);
        self::assertStringContainsString('run returned', $worker->output());
        self::assertSame([], $client->workers());
    }

    public function testAWorkerThatLostItsLeaseRegistersAgain(): void
    {
        $server = $this->server(['--lease-ms', '1000']);
        $client = $this->client($server);
        $task = $client->submit('sleepy', null, ['max_attempts' => 3]);
        // In the worker's process, a handler that never asks whether it was
        // cancelled holds up everything: the lease runs out under it.
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['fork' => false]);
$worker->register('sleepy', function ($payload, Dispatch\Context $ctx) {
    if ($ctx->attempt === 1) {
        sleep(3);
        return 'late';
    }
    return 'attempt ' . $ctx->attempt;
});
$worker->run();
PHP, $server);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame('attempt 2', $done['result']);
        self::assertStringContainsString('lease', $worker->output());
        self::assertSame(2, substr_count($worker->output(), 'registered as'));
    }

    /** A worker whose `hang` handler writes its pid and sleeps a minute (unless the payload says quick). */
    private const HANG = <<<'PHP'
$worker = new Dispatch\Worker($url, ['concurrency' => 2]);
$worker->register('hang', function ($payload, Dispatch\Context $ctx) use ($dir) {
    if ($payload['quick'] ?? false) {
        return 'quick';
    }
    file_put_contents("$dir/pid-{$ctx->id}", (string) getmypid());
    sleep(60);
    touch("$dir/finished-{$ctx->id}");
    return 'slept';
});
$worker->run();
PHP;
}
