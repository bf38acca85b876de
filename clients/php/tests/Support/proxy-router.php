<?php

// A router for PHP's built-in server (`php -S`): a loopback proxy between a
// worker and the real server that forwards every request and records each
// poll (what the worker sent, what the server answered, when) as a line of
// JSON in $PROXY_DIR/polls.jsonl. $PROXY_MODE:
//
// - `drop`: the first answer that hands tasks over never reaches the
//   worker (it gets a 502 from the proxy instead);
// - `hold`: a poll reporting the task named in $PROXY_DIR/quick-id waits
//   (up to 60 s) until a poll reporting another task has arrived;
//   $PROXY_DIR/quick-seen and slow-seen mark those arrivals.

declare(strict_types=1);

$upstream = (string) getenv('PROXY_UPSTREAM');
$dir = (string) getenv('PROXY_DIR');
$mode = (string) getenv('PROXY_MODE');
$method = $_SERVER['REQUEST_METHOD'];
$path = $_SERVER['REQUEST_URI'];
$raw = (string) file_get_contents('php://input');
$poll = str_ends_with(parse_url($path, PHP_URL_PATH) ?: '', '/poll');
$record = [];

if ($poll) {
    $body = json_decode($raw, true);
    $record = ['body' => $body, 'arrived' => microtime(true)];
    $reported = array_map(static fn ($r) => (string) ($r['task_id'] ?? ''), $body['results'] ?? []);
    if ($mode === 'hold' && $reported) {
        $quick = (string) @file_get_contents("$dir/quick-id");
        if ($quick !== '' && in_array($quick, $reported, true)) {
            touch("$dir/quick-seen");
            $until = microtime(true) + 60;
            while (!file_exists("$dir/slow-seen") && microtime(true) < $until) {
                usleep(20_000);
                clearstatcache();
            }
        } else {
            touch("$dir/slow-seen");
        }
    }
}

$headers = [];
foreach (getallheaders() as $name => $value) {
    if (in_array(strtolower($name), ['content-type', 'authorization'], true)) {
        $headers[] = "$name: $value";
    }
}
$curl = curl_init($upstream . $path);
curl_setopt_array($curl, [
    CURLOPT_CUSTOMREQUEST => $method,
    CURLOPT_RETURNTRANSFER => true,
    CURLOPT_HTTPHEADER => $headers,
    CURLOPT_TIMEOUT => 120,
]);
if ($raw !== '') {
    curl_setopt($curl, CURLOPT_POSTFIELDS, $raw);
}
$answer = curl_exec($curl);
$status = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
$type = curl_getinfo($curl, CURLINFO_CONTENT_TYPE);
curl_close($curl);
if ($answer === false) {
    $status = 502;
    $answer = '{"title":"upstream unreachable"}';
    $type = 'application/problem+json';
}

if ($poll) {
    $reply = $status === 200 ? json_decode($answer, true) : null;
    $record['status'] = $status;
    $record['reply'] = $reply;
    $record['answered'] = microtime(true);
    if ($mode === 'drop' && !empty($reply['tasks']) && ($marker = @fopen("$dir/dropped", 'x')) !== false) {
        fclose($marker);
        $record['dropped'] = true;
        $status = 502;
        $answer = '{"title":"the proxy dropped the answer"}';
        $type = 'application/problem+json';
    }
    file_put_contents("$dir/polls.jsonl", json_encode($record, JSON_UNESCAPED_SLASHES) . "\n", FILE_APPEND | LOCK_EX);
}

http_response_code($status);
if (is_string($type) && $type !== '') {
    header("content-type: $type");
}
echo $answer;
