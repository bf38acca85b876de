<?php

declare(strict_types=1);

namespace Dispatch;

/** No such task, worker or schedule (404). */
class NotFoundException extends ApiException
{
}
