<?php

declare(strict_types=1);

namespace Dispatch;

/** The call conflicts with the state: the task already ended, an idempotency key was reused for another request, a name exists (409). */
class ConflictException extends ApiException
{
}
