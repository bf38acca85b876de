<?php

declare(strict_types=1);

namespace Dispatch\Tests;

use Dispatch\ApiException;
use Dispatch\Client;
use Dispatch\ConflictException;
use Dispatch\ConnectionException;
use Dispatch\NotFoundException;
use Dispatch\Tests\Support\Server;
use Dispatch\Tests\Support\TestCase;
use Dispatch\ValidationException;

/** The REST client against a real server. */
final class ClientTest extends TestCase
{
    public function testSubmitSendsEveryOptionAndGetReadsTheTaskBack(): void
    {
        $client = $this->client($this->server());
        $parent = $client->submit('report.build', ['n' => 1]);
        $runAt = new \DateTimeImmutable('+1 hour');
        $task = $client->submit('email.send', ['to' => 'ada@example.com', 'tags' => ['a', 'b']], [
            'queue' => 'mail',
            'priority' => 7,
            'run_at' => $runAt,
            'timeout_ms' => 5000,
            'max_attempts' => 4,
            'backoff' => ['initial_ms' => 200, 'max_ms' => 1000],
            'idempotency_key' => 'mail-1',
            'routing_key' => 'ada',
            'labels' => ['region' => 'eu'],
            'depends_on' => [$parent['id']],
        ]);
        self::assertSame('email.send', $task['type']);
        $got = $client->get($task['id']);
        self::assertSame($task['id'], $got['id']);
        self::assertSame(['to' => 'ada@example.com', 'tags' => ['a', 'b']], $got['payload']);
        self::assertSame('mail', $got['queue']);
        self::assertSame(7, $got['priority']);
        self::assertSame(5000, $got['timeout_ms']);
        self::assertSame(4, $got['max_attempts']);
        self::assertSame(200, $got['backoff']['initial_ms']);
        self::assertSame('mail-1', $got['idempotency_key']);
        self::assertSame('ada', $got['routing_key']);
        self::assertSame(['region' => 'eu'], $got['labels']);
        self::assertSame([$parent['id']], $got['depends_on']);
        self::assertSame($runAt->getTimestamp(), (new \DateTimeImmutable($got['run_at']))->getTimestamp());
        self::assertSame('scheduled', $got['state']);

        // The same idempotency key and request: the original, not a copy.
        $again = $client->submit('email.send', ['to' => 'ada@example.com', 'tags' => ['a', 'b']], [
            'queue' => 'mail', 'priority' => 7, 'run_at' => $runAt, 'timeout_ms' => 5000, 'max_attempts' => 4,
            'backoff' => ['initial_ms' => 200, 'max_ms' => 1000], 'idempotency_key' => 'mail-1',
            'routing_key' => 'ada', 'labels' => ['region' => 'eu'], 'depends_on' => [$parent['id']],
        ]);
        self::assertSame($task['id'], $again['id']);
        // ... and with another request, a conflict naming the key.
        try {
            $client->submit('email.send', ['to' => 'bob@example.com'], ['idempotency_key' => 'mail-1']);
            self::fail('a reused idempotency key was accepted');
        } catch (ConflictException $e) {
            self::assertSame(409, $e->getStatus());
            self::assertSame('idempotency_key', $e->getField());
        }
    }

    public function testPayloadsOfEveryJsonKindAndDelay(): void
    {
        $client = $this->client($this->server());
        foreach ([null, 42, 'text', [1, 2], ['k' => 1.5], true] as $payload) {
            $task = $client->submit('echo', $payload, ['delay_ms' => 60_000]);
            self::assertSame($payload, $client->get($task['id'])['payload']);
            self::assertSame('scheduled', $task['state']);
        }
        $empty = $client->submit('echo', new \stdClass());
        self::assertSame([], $client->get($empty['id'])['payload']);
    }

    public function testBatchListPagesCancelAndRetry(): void
    {
        $client = $this->client($this->server());
        $tasks = $client->submitBatch([
            ['type' => 'a', 'payload' => ['i' => 1]],
            ['type' => 'a', 'payload' => ['i' => 2], 'queue' => 'q2'],
            ['type' => 'b'],
        ]);
        self::assertCount(3, $tasks);
        self::assertSame('q2', $tasks[1]['queue']);
        $minimal = $client->submitBatch([['type' => 'a'], ['type' => 'a']], true);
        self::assertSame(['id', 'state'], array_keys($minimal[0]));

        $page = $client->list(['type' => 'a', 'limit' => 2]);
        self::assertCount(2, $page['tasks']);
        self::assertNotNull($page['next_cursor']);
        $next = $client->list(['type' => 'a', 'limit' => 2, 'cursor' => $page['next_cursor']]);
        self::assertCount(2, $next['tasks']);
        $ids = array_map(static fn (array $t) => $t['id'], iterator_to_array($client->each(['type' => 'a', 'limit' => 2]), false));
        self::assertCount(4, $ids);
        self::assertSame($ids, array_values(array_unique($ids)));
        self::assertSame([$tasks[1]['id']], array_column($client->list(['queue' => 'q2'])['tasks'], 'id'));

        $cancelled = $client->cancel($tasks[2]['id']);
        self::assertSame('cancelled', $cancelled['state']);
        try {
            $client->cancel($tasks[2]['id']);
            self::fail('cancelling an ended task was accepted');
        } catch (ConflictException $e) {
            self::assertSame(409, $e->getStatus());
        }
        try {
            $client->retry($tasks[0]['id']);
            self::fail('retrying a queued task was accepted');
        } catch (ConflictException $e) {
            self::assertSame(409, $e->getStatus());
        }
        self::assertSame(1, $client->cancelMatching(['queue' => 'q2']));
        self::assertSame('cancelled', $client->get($tasks[1]['id'])['state']);

        $queue = $client->pauseQueue('default');
        self::assertTrue($queue['paused']);
        self::assertFalse($client->resumeQueue('default')['paused']);
        self::assertContains('default', array_column($client->queues(), 'name'));
        self::assertSame([], $client->workers());
        self::assertSame('ok', $client->health()['status']);
    }

    public function testDelayAndSchedules(): void
    {
        $client = $this->client($this->server());
        $before = time();
        $task = $client->submit('later', null, ['delay' => 3600]);
        $runAt = (new \DateTimeImmutable($task['run_at']))->getTimestamp();
        self::assertGreaterThanOrEqual($before + 3599, $runAt);
        self::assertLessThanOrEqual(time() + 3601, $runAt);
        $interval = $client->submit('later', null, ['delay' => new \DateInterval('PT2H')]);
        self::assertGreaterThanOrEqual($before + 7199, (new \DateTimeImmutable($interval['run_at']))->getTimestamp());

        $schedule = $client->createSchedule('nightly.report', '30 6 * * *', ['type' => 'report.build', 'payload' => ['kind' => 'daily'], 'max_attempts' => 2], ['timezone' => 'Europe/Paris']);
        self::assertSame('nightly.report', $schedule['name']);
        self::assertNotNull($schedule['next_fire_at']);
        self::assertSame('Europe/Paris', $client->schedule('nightly.report')['timezone']);
        self::assertSame(['nightly.report'], array_column($client->schedules(), 'name'));
        try {
            $client->createSchedule('nightly.report', '30 6 * * *', ['type' => 'report.build']);
            self::fail('a second schedule of one name was created');
        } catch (ConflictException $e) {
            self::assertSame(409, $e->getStatus());
        }
        try {
            $client->createSchedule('bad', 'not a cron', ['type' => 'report.build']);
            self::fail('a bad cron expression was accepted');
        } catch (ValidationException $e) {
            self::assertSame('cron', $e->getField());
        }
        $client->deleteSchedule('nightly.report');
        self::assertSame([], $client->schedules());
        $this->expectException(NotFoundException::class);
        $client->schedule('nightly.report');
    }

    public function testWaitReturnsTheTaskAsLastSeenWhenTimeIsUp(): void
    {
        $client = $this->client($this->server());
        $task = $client->submit('nobody.runs.this');
        $started = microtime(true);
        $seen = $client->wait($task['id'], 300);
        self::assertSame('queued', $seen['state']);
        self::assertGreaterThanOrEqual(0.25, microtime(true) - $started);
        self::assertSame('cancelled', $client->wait($client->cancel($task['id'])['id'], 1000)['state']);
    }

    public function testBadInputRaisesTheServersProblem(): void
    {
        $client = $this->client($this->server());
        $cases = [
            [fn () => $client->submit('email.send', null, ['priority' => 1000]), 422, 'priority'],
            [fn () => $client->submit('email.send', null, ['prioirty' => 1]), 400, 'prioirty'],
            [fn () => $client->submit('bad type!'), 422, 'type'],
            [fn () => $client->submitBatch([['type' => 'ok'], ['type' => 'ok', 'max_attempts' => 0]]), 422, 'tasks[1].max_attempts'],
            [fn () => $client->list(['limit' => 5000]), 422, 'limit'],
            [fn () => $client->list(['stat' => 'dead']), 400, 'stat'],
        ];
        foreach ($cases as [$call, $status, $field]) {
            try {
                $call();
                self::fail("accepted; expected $status naming $field");
            } catch (ValidationException $e) {
                self::assertSame($status, $e->getStatus(), $e->getMessage());
                self::assertSame($field, $e->getField(), $e->getMessage());
                self::assertSame($status, $e->getProblem()['status']);
                self::assertNotSame('', $e->getDetail());
                self::assertStringContainsString($field, $e->getMessage());
            }
        }
        try {
            $client->get('999999');
            self::fail('an unknown task was found');
        } catch (NotFoundException $e) {
            self::assertSame(404, $e->getStatus());
            self::assertInstanceOf(ApiException::class, $e);
        }
    }

    public function testOptionsAreChecked(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        $this->expectExceptionMessage('tokn');
        new Client('http://127.0.0.1:7070', ['tokn' => 'x']);
    }

    public function testUrlsAreChecked(): void
    {
        $this->expectException(\InvalidArgumentException::class);
        new Client('127.0.0.1:7070');
    }

    public function testAServerThatCannotBeReachedRaisesAConnectionError(): void
    {
        $url = 'http://127.0.0.1:' . Server::freePort();
        $client = new Client($url, ['retry_ms' => 0]);
        try {
            $client->submit('a');
            self::fail('a request without a server succeeded');
        } catch (ConnectionException $e) {
            self::assertFalse($e->wasSent());
            self::assertSame($url, $e->getUrl());
        }
    }

    public function testADeadFirstServerIsPassedOverAndTheLiveOneKept(): void
    {
        $dead = 'http://127.0.0.1:' . Server::freePort();
        $server = $this->server();
        $client = new Client("$dead,{$server->url}");
        $task = $client->submit('failover', ['n' => 1]);
        self::assertSame($server->url, $client->url());
        self::assertSame($task['id'], $client->get($task['id'])['id']);
    }
}
