<?php

declare(strict_types=1);

namespace Dispatch\Tests;

use Dispatch\Tests\Support\Server;
use Dispatch\Tests\Support\TestCase;

/**
 * Replicas on PostgreSQL (`DISPATCH_TEST_POSTGRES`): a client and a worker
 * given every replica go on when the leader dies.
 */
final class ReplicasTest extends TestCase
{
    public function testClientAndWorkerMoveOnWhenTheLeaderDies(): void
    {
        $db = Server::freshDatabase();
        $args = ['--store', $db, '--leader-lease-ms', '1500'];
        $first = $this->server($args);
        $this->eventually(fn () => ($first->health()['role'] ?? null) === 'leader', 'the first replica to lead');
        $second = $this->server($args);
        $this->eventually(fn () => ($second->health()['role'] ?? null) === 'standby', 'the second replica to stand by');
        $urls = "{$first->url},{$second->url}";

        $client = $this->client($urls);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker(getenv('TEST_URLS'), ['concurrency' => 2]);
$worker->register('echo', fn ($payload, Dispatch\Context $ctx) => ['payload' => $payload, 'attempt' => $ctx->attempt]);
$worker->run();
PHP, $first, ['TEST_URLS' => $urls]);
        $before = $client->submit('echo', 'before');
        self::assertSame(['payload' => 'before', 'attempt' => 1], $this->finished($client, $before['id'], $worker)['result']);

        $first->kill();
        // The submission finds the first replica gone and waits out the
        // takeover on the second (503 until it leads).
        $after = $client->submit('echo', 'after');
        self::assertSame($second->url, $client->url());
        $done = $this->finished($client, $after['id'], $worker);
        self::assertSame('succeeded', $done['state'], $worker->output());
        self::assertSame(['payload' => 'after', 'attempt' => 1], $done['result']);
        self::assertSame('leader', $second->health()['role']);
        self::assertTrue($worker->running());
    }
}
