<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * Every error this library raises about a server: it could not be reached
 * ({@see ConnectionException}) or it refused the request ({@see ApiException}).
 */
class DispatchException extends \RuntimeException
{
}
