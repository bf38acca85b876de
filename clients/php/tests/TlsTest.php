<?php

declare(strict_types=1);

namespace Dispatch\Tests;

use Dispatch\ConnectionException;
use Dispatch\Tests\Support\TestCase;

/** An `https://` server whose certificate a private CA signed (made with openssl). */
final class TlsTest extends TestCase
{
    public function testAClientAndAWorkerTrustThePrivateCaTheyAreGiven(): void
    {
        $ca = $this->certificates();
        $server = $this->server(['--tls-cert', "{$this->dir}/server.pem", '--tls-key', "{$this->dir}/server-key.pem"]);
        self::assertStringStartsWith('https://', $server->url);

        $client = $this->client($server, ['ca' => $ca]);
        $task = $client->submit('echo', ['secure' => true]);
        $worker = $this->php(<<<'PHP'
$worker = new Dispatch\Worker($url, ['ca' => getenv('TEST_CA')]);
$worker->register('echo', fn ($payload) => $payload);
$worker->run();
PHP, $server, ['TEST_CA' => $ca]);
        $done = $this->finished($client, $task['id'], $worker);
        self::assertSame(['secure' => true], $done['result'], $worker->output());

        // Without the CA, the server's certificate is not trusted, and
        // nothing was sent.
        try {
            $this->client($server, ['retry_ms' => 0])->get($task['id']);
            self::fail('a certificate from an unknown authority was trusted');
        } catch (ConnectionException $e) {
            self::assertFalse($e->wasSent(), $e->getMessage());
        }
    }

    /** A CA and a server certificate it signs for 127.0.0.1; returns the CA's file. */
    private function certificates(): string
    {
        $d = $this->dir;
        $steps = [
            ['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
                '-subj', '/CN=Dispatch PHP test CA', '-keyout', "$d/ca-key.pem", '-out', "$d/ca.pem"],
            ['openssl', 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
                '-subj', '/CN=localhost', '-keyout', "$d/server-key.pem", '-out', "$d/server.csr"],
            ['openssl', 'x509', '-req', '-in', "$d/server.csr", '-CA', "$d/ca.pem", '-CAkey', "$d/ca-key.pem", '-CAcreateserial',
                '-days', '2', '-extfile', "$d/server.ext", '-out', "$d/server.pem"],
        ];
        file_put_contents("$d/server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
        foreach ($steps as $command) {
            $process = proc_open($command, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
            stream_get_contents($pipes[1]);
            $err = stream_get_contents($pipes[2]);
            if (proc_close($process) !== 0) {
                self::fail(implode(' ', $command) . " failed: $err");
            }
        }
        return "$d/ca.pem";
    }
}
