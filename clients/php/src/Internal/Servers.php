<?php

declare(strict_types=1);

namespace Dispatch\Internal;

use Dispatch\ApiException;
use Dispatch\ConnectionException;

/**
 * The servers of one Dispatch deployment (one, or the replicas of a
 * cluster, given comma-separated), the credentials to reach them, and the
 * choice of which one to talk to.
 *
 * Every request goes to the server in use. A request that cannot reach it
 * (refused, unresolved, no route: never sent) and one it answers 503 (a
 * standby that cannot reach the leader, a takeover in progress: not
 * served) go to the next server at once, once round; the server that
 * answers is used from then on. A request that was sent and got no answer
 * (a timeout, a connection cut) is not sent again, since it may have been
 * acted on, but the next request goes to the next server.
 *
 * @internal
 */
final class Servers
{
    public const VERSION = '0.1.0';

    /** @var list<string> */
    private readonly array $urls;
    private int $current = 0;
    private readonly ?string $token;
    private readonly ?string $ca;
    /** Seconds a request may take, the answer included (long polls add their wait). */
    public readonly float $timeout;
    private ?\CurlHandle $blocking = null;

    /**
     * @param array{token?: ?string, ca?: ?string, timeout?: int|float} $options
     */
    public function __construct(string $urls, array $options = [])
    {
        $list = [];
        foreach (explode(',', $urls) as $url) {
            $url = rtrim(trim($url), '/');
            if (!preg_match('~^https?://[^/\s]+(/\S*)?$~i', $url)) {
                throw new \InvalidArgumentException("invalid server URL \"$url\": expected http://HOST:PORT or https://HOST:PORT, several separated by commas");
            }
            $list[] = $url;
        }
        $this->urls = $list;
        $token = $options['token'] ?? null;
        if ($token !== null && !is_string($token)) {
            throw new \InvalidArgumentException('option token must be a string');
        }
        $this->token = $token === '' ? null : $token;
        $ca = $options['ca'] ?? null;
        if ($ca !== null && (!is_string($ca) || !is_readable($ca))) {
            throw new \InvalidArgumentException('option ca must name a readable PEM file of certificate authorities');
        }
        $this->ca = $ca;
        $timeout = $options['timeout'] ?? 30;
        if (!is_int($timeout) && !is_float($timeout) || $timeout <= 0) {
            throw new \InvalidArgumentException('option timeout must be a positive number of seconds');
        }
        $this->timeout = (float) $timeout;
    }

    /** @return list<string> every server given */
    public function urls(): array
    {
        return $this->urls;
    }

    /** The server in use: the one that answered last. */
    public function current(): string
    {
        return $this->urls[$this->current];
    }

    /** How many servers were given. */
    public function count(): int
    {
        return count($this->urls);
    }

    /** Makes `$server` the one in use (it answered). */
    public function answered(int $server): void
    {
        $this->current = $server % count($this->urls);
    }

    /** Moves on from `$server` when it is the one in use (it failed). */
    public function failed(int $server): void
    {
        if ($this->current === $server) {
            $this->current = ($server + 1) % count($this->urls);
        }
    }

    /** The index of the server in use. */
    public function currentIndex(): int
    {
        return $this->current;
    }

    /**
     * A curl handle for one request to one server.
     *
     * @param array<string, mixed>|object|string|null $body sent as JSON
     *     (a string is JSON already)
     * @param list<string> $headers extra headers
     * @param float|null $timeout seconds for the whole exchange
     */
    public function exchange(string $method, string $path, array|object|string|null $body = null, ?int $server = null, ?float $timeout = null, array $headers = [], ?\CurlHandle $reuse = null): Exchange
    {
        $server ??= $this->current;
        $url = $this->urls[$server];
        if ($reuse !== null) {
            curl_reset($reuse);
        }
        $curl = $reuse ?? curl_init();
        $all = ['Accept: application/json', 'User-Agent: dispatch-php/' . self::VERSION];
        if ($this->token !== null) {
            $all[] = 'Authorization: Bearer ' . $this->token;
        }
        $options = [
            CURLOPT_URL => $url . $path,
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_CONNECTTIMEOUT_MS => (int) (min(5.0, $timeout ?? $this->timeout) * 1000),
            CURLOPT_TIMEOUT_MS => (int) (($timeout ?? $this->timeout) * 1000),
            CURLOPT_NOSIGNAL => true,
            CURLOPT_PROTOCOLS => CURLPROTO_HTTP | CURLPROTO_HTTPS,
        ];
        if ($body !== null) {
            $options[CURLOPT_POSTFIELDS] = is_string($body) ? $body : self::json($body);
            $all[] = 'Content-Type: application/json';
        } elseif ($method === 'POST') {
            $options[CURLOPT_POSTFIELDS] = '';
        }
        if ($this->ca !== null) {
            $options[CURLOPT_CAINFO] = $this->ca;
        }
        $options[CURLOPT_HTTPHEADER] = array_merge($all, $headers);
        $exchange = new Exchange($curl, $server, $url, $method, $path);
        $options[CURLOPT_HEADERFUNCTION] = static function (\CurlHandle $c, string $line) use ($exchange): int {
            if (stripos($line, 'retry-after:') === 0) {
                $value = trim(substr($line, strlen('retry-after:')));
                if (ctype_digit($value)) {
                    $exchange->retryAfterMs = (int) $value * 1000;
                }
            }
            return strlen($line);
        };
        curl_setopt_array($curl, $options);
        return $exchange;
    }

    /**
     * Sends one request and waits for the answer, moving on to the next
     * server as the class describes (once round).
     *
     * @param array<string, mixed>|object|string|null $body
     * @param list<string> $headers
     * @return mixed the decoded JSON answer (null for 204)
     * @throws ApiException|ConnectionException
     */
    public function send(string $method, string $path, array|object|string|null $body = null, ?float $timeout = null, array $headers = []): mixed
    {
        $this->blocking ??= curl_init();
        $last = null;
        $start = $this->current;
        $n = count($this->urls);
        for ($i = 0; $i < $n; $i++) {
            $server = ($start + $i) % $n;
            $exchange = $this->exchange($method, $path, $body, $server, $timeout, $headers, $this->blocking);
            $raw = curl_exec($this->blocking);
            try {
                $answer = $exchange->answer(curl_errno($this->blocking), is_string($raw) ? $raw : null);
                $this->answered($server);
                return $answer;
            } catch (ConnectionException $e) {
                $last = $e;
                if ($e->wasSent()) {
                    if ($n > 1) {
                        $this->failed($server);
                    }
                    throw $e;
                }
            } catch (ApiException $e) {
                if ($e->getStatus() !== 503 || $n === 1) {
                    $this->answered($server);
                    throw $e;
                }
                $last = $e;
            }
        }
        // Every server failed: start from the next one next time.
        $this->failed($start);
        throw $last;
    }

    /**
     * JSON for the wire: slashes and Unicode as they are, floats keeping
     * their fraction.
     */
    public static function json(mixed $value): string
    {
        try {
            return json_encode($value, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
        } catch (\JsonException $e) {
            throw new \InvalidArgumentException('cannot encode as JSON: ' . $e->getMessage(), 0, $e);
        }
    }

    /** A path segment, percent-encoded. */
    public static function segment(string $s): string
    {
        return rawurlencode($s);
    }
}
