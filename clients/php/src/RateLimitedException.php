<?php

declare(strict_types=1);

namespace Dispatch;

/** Over a limit (429); `getRetryAfterMs()` says when to try again. */
class RateLimitedException extends ApiException
{
}
