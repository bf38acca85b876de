<?php

declare(strict_types=1);

namespace Dispatch\Internal;

use Dispatch\AbortTask;
use Dispatch\Context;
use Dispatch\RetryTask;
use Dispatch\TaskInterface;

/**
 * Runs one attempt of a task through its handler and writes its report:
 * the JSON of one item of a poll's `results`.
 *
 * @internal
 */
final class Attempt
{
    /**
     * @param array<string, mixed> $task as the poll handed it over
     * @return string `{"task_id", "result"}` or `{"task_id", "error", "abort"|"retry_after_ms"}`
     */
    public static function run(TaskInterface|callable $handler, array $task, Context $ctx): string
    {
        $payload = $task['payload'] ?? null;
        try {
            if ($handler instanceof TaskInterface) {
                $params = match (true) {
                    is_array($payload) => $payload,
                    $payload === null => [],
                    default => [$payload],
                };
                // A second argument reaches an implementation that declares
                // `?Context $ctx = null`; PHP drops it for one that does not.
                $result = $handler->execute($params, $ctx);
            } else {
                $result = $handler($payload, $ctx);
            }
        } catch (AbortTask $e) {
            return self::failure($ctx->id, self::message($e, false), ['abort' => true]);
        } catch (RetryTask $e) {
            return self::failure($ctx->id, self::message($e, false), ['retry_after_ms' => $e->getDelayMs()]);
        } catch (\Throwable $e) {
            return self::failure($ctx->id, self::message($e, true));
        }
        try {
            $json = json_encode($result, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
        } catch (\JsonException $e) {
            return self::failure($ctx->id, 'the handler returned a result that cannot be encoded as JSON: ' . $e->getMessage());
        }
        return self::success($ctx->id, $json);
    }

    /** The report of a success, its result already JSON. */
    public static function success(string $id, string $resultJson): string
    {
        return '{"task_id":' . Servers::json($id) . ',"result":' . $resultJson . '}';
    }

    /**
     * The report of a failed attempt.
     *
     * @param array{abort?: bool, retry_after_ms?: int} $how
     */
    public static function failure(string $id, string $error, array $how = []): string
    {
        return json_encode(
            ['task_id' => $id, 'error' => $error] + $how,
            JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE,
        );
    }

    /** What an exception says, for the task's `error`. */
    private static function message(\Throwable $e, bool $withClass): string
    {
        $message = $e->getMessage();
        if (!$withClass) {
            return $message !== '' ? $message : get_class($e);
        }
        return $message !== '' ? get_class($e) . ': ' . $message : get_class($e);
    }
}
