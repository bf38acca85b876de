<?php

declare(strict_types=1);

namespace Dispatch\Tests\Support;

/**
 * A `dispatch server` child process on a free loopback port, with a data
 * folder of its own; killed and removed by stop().
 */
final class Server
{
    /** How long a server may take to come up. */
    private const START_TIMEOUT = 20.0;

    /** @var resource|null */
    private $process;
    public readonly string $url;
    public readonly string $dir;
    private readonly string $log;

    /**
     * @param list<string> $args extra `dispatch server` arguments
     * @param int|null $port the port to listen on (a restart), else a free one
     */
    private function __construct(private readonly array $args, ?int $port = null, ?string $dir = null)
    {
        $this->dir = $dir ?? self::tempDir('dispatch-php-server');
        $this->log = $this->dir . '/server.log';
        for ($try = 0; ; $try++) {
            $port ??= self::freePort();
            $listen = "127.0.0.1:$port";
            // A replica on PostgreSQL has no data folder.
            $data = in_array('--store', $args, true) ? [] : ['--data', $this->dir . '/data'];
            $cmd = array_merge([self::binary(), 'server', '--listen', $listen], $data, $args);
            $env = ['RUST_LOG' => 'warn', 'NO_COLOR' => '1', 'PATH' => getenv('PATH') ?: '/usr/bin:/bin'];
            $this->process = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', $this->log, 'a'], 2 => ['file', $this->log, 'a']], $pipes, null, $env);
            if (!is_resource($this->process)) {
                throw new \RuntimeException('cannot start ' . self::binary());
            }
            $deadline = microtime(true) + self::START_TIMEOUT;
            while (true) {
                $log = (string) @file_get_contents($this->log);
                if (str_contains($log, 'dispatch server listening on') && str_contains($log, $listen)) {
                    break;
                }
                if (!proc_get_status($this->process)['running']) {
                    proc_close($this->process);
                    $this->process = null;
                    if ((str_contains($log, 'in use') || str_contains($log, 'cannot listen')) && $try < 5 && $dir === null) {
                        file_put_contents($this->log, '');
                        $port = null;
                        continue 2;
                    }
                    throw new \RuntimeException("dispatch server exited at start:\n$log");
                }
                if (microtime(true) > $deadline) {
                    $this->stop();
                    throw new \RuntimeException("dispatch server did not start:\n$log");
                }
                usleep(20_000);
            }
            $this->url = (in_array('--tls-cert', $args, true) ? 'https' : 'http') . "://$listen";
            return;
        }
    }

    /** @param list<string> $args */
    public static function start(array $args = []): self
    {
        return new self($args);
    }

    /** The binary under test. */
    public static function binary(): string
    {
        $bin = getenv('DISPATCH_BIN') ?: __DIR__ . '/../../../../target/debug/dispatch';
        if (!is_file($bin) || !is_executable($bin)) {
            throw new \RuntimeException("no dispatch binary at $bin: run `cargo build -p dispatch-cli` first, or set DISPATCH_BIN");
        }
        return realpath($bin);
    }

    /** A loopback port nobody listens on now. */
    public static function freePort(): int
    {
        $socket = stream_socket_server('tcp://127.0.0.1:0', $errno, $error);
        if ($socket === false) {
            throw new \RuntimeException("cannot bind a port: $error");
        }
        $name = stream_socket_get_name($socket, false);
        fclose($socket);
        return (int) substr($name, strrpos($name, ':') + 1);
    }

    /** A fresh temporary folder. */
    public static function tempDir(string $prefix): string
    {
        $dir = sys_get_temp_dir() . '/' . $prefix . '-' . bin2hex(random_bytes(6));
        mkdir($dir, 0700, true);
        return $dir;
    }

    /** Removes a folder and what it holds. */
    public static function remove(string $dir): void
    {
        if (!is_dir($dir)) {
            return;
        }
        $items = new \RecursiveIteratorIterator(new \RecursiveDirectoryIterator($dir, \FilesystemIterator::SKIP_DOTS), \RecursiveIteratorIterator::CHILD_FIRST);
        foreach ($items as $item) {
            $item->isDir() && !$item->isLink() ? rmdir($item->getPathname()) : unlink($item->getPathname());
        }
        rmdir($dir);
    }

    /** Creates a token of `$scope` in the token file `$file`; returns it. */
    public static function createToken(string $file, string $scope, string $name): string
    {
        $cmd = [self::binary(), 'token', 'create', '--scope', $scope, '--name', $name, '--tokens', $file];
        $process = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        if (proc_close($process) !== 0) {
            throw new \RuntimeException("dispatch token create failed: $err");
        }
        return trim($out);
    }

    /** The server's output so far, for a failure's message. */
    public function logs(): string
    {
        return (string) @file_get_contents($this->log);
    }

    /** Kills the server (SIGKILL) and keeps its folder. */
    public function kill(): void
    {
        if (is_resource($this->process)) {
            proc_terminate($this->process, 9);
            proc_close($this->process);
            $this->process = null;
        }
    }

    /**
     * A server started again on this one's port and data, once this one
     * was killed.
     */
    public function restart(): self
    {
        $this->kill();
        $port = (int) substr($this->url, strrpos($this->url, ':') + 1);
        return new self($this->args, $port, $this->dir);
    }

    /** Kills the server (SIGKILL) and removes its folder. */
    public function stop(): void
    {
        $this->kill();
        self::remove($this->dir);
    }

    /** `/healthz` as the server answers it, or null when it does not. */
    public function health(): ?array
    {
        $context = stream_context_create(['http' => ['timeout' => 5, 'ignore_errors' => true]]);
        $body = @file_get_contents($this->url . '/healthz', false, $context);
        $health = is_string($body) ? json_decode($body, true) : null;
        return is_array($health) ? $health : null;
    }

    /**
     * A new, empty PostgreSQL database on the server of the test script
     * (`DISPATCH_TEST_POSTGRES`, set by ./scripts/test and
     * ./scripts/with-postgres), and its URL.
     */
    public static function freshDatabase(): string
    {
        $server = getenv('DISPATCH_TEST_POSTGRES');
        if (!$server) {
            throw new \RuntimeException('DISPATCH_TEST_POSTGRES is not set: run the tests with ./scripts/test, or ../../scripts/with-postgres phpunit, which start a throwaway PostgreSQL');
        }
        $db = 'dispatch_php_' . getmypid() . '_' . bin2hex(random_bytes(4));
        $process = proc_open(['psql', $server, '-v', 'ON_ERROR_STOP=1', '-q', '-c', "CREATE DATABASE $db"], [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        if (proc_close($process) !== 0) {
            throw new \RuntimeException("cannot create a database: $err");
        }
        return substr($server, 0, strrpos($server, '/')) . '/' . $db;
    }
}
