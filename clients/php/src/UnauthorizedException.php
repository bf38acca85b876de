<?php

declare(strict_types=1);

namespace Dispatch;

/** No token, or a token the server does not know (401). */
class UnauthorizedException extends ApiException
{
}
