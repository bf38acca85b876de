<?php

declare(strict_types=1);

namespace Dispatch;

/** The server cannot serve now (5xx): a store that fails, a replica that cannot reach its leader, a takeover in progress. */
class UnavailableException extends ApiException
{
}
