<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * No server answered: every URL refused the connection, could not be
 * resolved, or timed out, or the answer was cut off.
 */
class ConnectionException extends DispatchException
{
    /**
     * @param string $url the server last tried
     * @param bool $sent whether the request may have reached that server
     *     (it was sent and the answer did not come back): such a request
     *     may have been acted on
     */
    public function __construct(
        string $message,
        private readonly string $url,
        private readonly bool $sent = false,
        ?\Throwable $previous = null,
    ) {
        parent::__construct($message, 0, $previous);
    }

    /** The server last tried. */
    public function getUrl(): string
    {
        return $this->url;
    }

    /**
     * Whether the request may have reached the server (and been acted on):
     * false when the connection itself failed.
     */
    public function wasSent(): bool
    {
        return $this->sent;
    }
}
