<?php

declare(strict_types=1);

namespace Dispatch;

/** The request was malformed (400), too large (413), of the wrong content type (415) or invalid (422); `getField()` names the input at fault. */
class ValidationException extends ApiException
{
}
