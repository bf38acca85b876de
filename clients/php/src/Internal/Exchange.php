<?php

declare(strict_types=1);

namespace Dispatch\Internal;

use Dispatch\ApiException;
use Dispatch\ConnectionException;

/**
 * One HTTP request to one server: its curl handle, the headers the answer
 * brought, and how to read the answer.
 *
 * @internal
 */
final class Exchange
{
    /** The answer's `Retry-After`, in milliseconds. */
    public ?int $retryAfterMs = null;

    /** When the request was started (Unix time). */
    public readonly float $startedAt;

    public function __construct(
        public readonly \CurlHandle $curl,
        public readonly int $server,
        public readonly string $url,
        public readonly string $method,
        public readonly string $path,
    ) {
        $this->startedAt = microtime(true);
    }

    /**
     * Reads the answer once curl is done with the request.
     *
     * @param int $errno curl's result code for the transfer
     * @param string|null $body the body read (from curl_exec or
     *     curl_multi_getcontent)
     * @return mixed the decoded JSON of a 2xx answer (null for 204)
     * @throws ConnectionException when no answer came; `wasSent()` says
     *     whether the request may have reached the server
     * @throws ApiException for an error status
     */
    public function answer(int $errno, ?string $body): mixed
    {
        if ($errno !== CURLE_OK) {
            $why = curl_error($this->curl) ?: (curl_strerror($errno) ?? "curl error $errno");
            throw new ConnectionException(
                sprintf('cannot reach the server at %s: %s', $this->url, $why),
                $this->url,
                !self::notSent($errno, $this->curl),
            );
        }
        $status = (int) curl_getinfo($this->curl, CURLINFO_RESPONSE_CODE);
        $body ??= '';
        if ($status >= 200 && $status < 300) {
            if ($status === 204 || $body === '') {
                return null;
            }
            try {
                return json_decode($body, true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
            } catch (\JsonException $e) {
                throw new ConnectionException("the server at {$this->url} answered $status with a body that is not JSON: " . $e->getMessage(), $this->url, true, $e);
            }
        }
        $problem = null;
        if ($body !== '') {
            try {
                $problem = json_decode($body, true, 512, JSON_THROW_ON_ERROR);
            } catch (\JsonException) {
                $problem = null;
            }
        }
        if (!is_array($problem)) {
            $problem = ['status' => $status, 'title' => "HTTP $status", 'detail' => trim(substr($body, 0, 2000))];
        }
        throw ApiException::fromProblem($status, $problem, $this->retryAfterMs, $this->url);
    }

    /**
     * Whether a transfer that failed with `$errno` never sent its request:
     * such a request was not acted on, and may go to another server.
     */
    private static function notSent(int $errno, \CurlHandle $curl): bool
    {
        // The connection failed, or its TLS handshake did (a certificate
        // not trusted, no cipher in common): nothing was sent.
        $before = [
            CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_CONNECT,
            CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER, CURLE_SSL_CACERT,
            CURLE_SSL_CACERT_BADFILE, CURLE_SSL_PINNEDPUBKEYNOTMATCH,
        ];
        if (in_array($errno, $before, true)) {
            return true;
        }
        // A timeout before the connection was made (curl counts the
        // pre-transfer time only once it is).
        return $errno === CURLE_OPERATION_TIMEDOUT && (float) curl_getinfo($curl, CURLINFO_PRETRANSFER_TIME) === 0.0;
    }
}
