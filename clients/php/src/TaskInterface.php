<?php

declare(strict_types=1);

namespace Dispatch;

/**
 * A task handler, registered for a task type with {@see Worker::register()}.
 *
 * `execute` gets the task's payload (a JSON object or array, decoded into
 * a PHP array; a null payload is `[]`, any other scalar `[$payload]`) and
 * returns the result, any JSON-encodable value. Returning succeeds the
 * task; throwing fails this attempt:
 *
 * - {@see RetryTask}: retry after the given delay (while attempts are left);
 * - {@see AbortTask}: no retry, the task is `dead` at once;
 * - anything else: retry with the task's backoff (while attempts are left).
 *
 * An implementation may declare a second parameter,
 * `?Context $ctx = null`, to receive the task's {@see Context} (its id,
 * attempt, deadline).
 */
interface TaskInterface
{
    /**
     * @param array<mixed> $params the task's payload
     * @return mixed the result, stored with the task
     */
    public function execute(array $params): mixed;
}
