<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * The server answered with an error status. The problem body
 * (`application/problem+json`: `type`, `title`, `status`, `detail`, and
 * `field` when one input is at fault) is kept as the server sent it.
 *
 * Subclasses by status: {@see ValidationException} (400, 413, 415, 422),
 * {@see UnauthorizedException} (401), {@see ForbiddenException} (403),
 * {@see NotFoundException} (404), {@see ConflictException} (409),
 * {@see RateLimitedException} (429), {@see UnavailableException} (5xx).
 */
class ApiException extends DispatchException
{
    /**
     * @param array<string, mixed> $problem
     */
    public function __construct(
        private readonly int $status,
        private readonly array $problem,
        private readonly ?int $retryAfterMs = null,
        private readonly string $url = '',
    ) {
        $detail = is_string($problem['detail'] ?? null) ? $problem['detail'] : '';
        $title = is_string($problem['title'] ?? null) ? $problem['title'] : "HTTP $status";
        $message = $detail !== '' ? "$title: $detail" : $title;
        if (is_string($problem['field'] ?? null)) {
            $message .= " (field {$problem['field']})";
        }
        parent::__construct($message, $status);
    }

    /**
     * The exception for an error answer.
     *
     * @param array<string, mixed> $problem
     */
    public static function fromProblem(int $status, array $problem, ?int $retryAfterMs = null, string $url = ''): self
    {
        return match (true) {
            in_array($status, [400, 413, 415, 422], true) => new ValidationException($status, $problem, $retryAfterMs, $url),
            $status === 401 => new UnauthorizedException($status, $problem, $retryAfterMs, $url),
            $status === 403 => new ForbiddenException($status, $problem, $retryAfterMs, $url),
            $status === 404 => new NotFoundException($status, $problem, $retryAfterMs, $url),
            $status === 409 => new ConflictException($status, $problem, $retryAfterMs, $url),
            $status === 429 => new RateLimitedException($status, $problem, $retryAfterMs, $url),
            $status >= 500 => new UnavailableException($status, $problem, $retryAfterMs, $url),
            default => new self($status, $problem, $retryAfterMs, $url),
        };
    }

    /** The HTTP status. */
    public function getStatus(): int
    {
        return $this->status;
    }

    /**
     * The problem body as the server sent it.
     *
     * @return array<string, mixed>
     */
    public function getProblem(): array
    {
        return $this->problem;
    }

    /** The input at fault (`priority`, `tasks[3].type`), when the server named one. */
    public function getField(): ?string
    {
        return is_string($this->problem['field'] ?? null) ? $this->problem['field'] : null;
    }

    /** The server's explanation. */
    public function getDetail(): string
    {
        return is_string($this->problem['detail'] ?? null) ? $this->problem['detail'] : '';
    }

    /** The problem's title (`Unprocessable Entity`). */
    public function getTitle(): string
    {
        return is_string($this->problem['title'] ?? null) ? $this->problem['title'] : '';
    }

    /** How long the server asked to wait before trying again (`Retry-After`), in milliseconds. */
    public function getRetryAfterMs(): ?int
    {
        return $this->retryAfterMs;
    }

    /** The server that answered. */
    public function getUrl(): string
    {
        return $this->url;
    }
}
