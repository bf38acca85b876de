<?php

declare(strict_types=1);

namespace Dispatch;

/** The token lacks the scope this call needs (403). */
class ForbiddenException extends ApiException
{
}
