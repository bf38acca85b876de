<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * Thrown by a handler: this task cannot succeed (bad input, a permanent
 * refusal). It is not retried; it is `dead` at once, with this message as
 * its error.
 */
class AbortTask extends \Exception
{
}
