<?php

declare(strict_types=1);

// The tests drive the real `dispatch` binary: DISPATCH_BIN, or the
// workspace's target/debug/dispatch (built by `cargo build -p dispatch-cli`
// or `cargo test`).
require __DIR__ . '/../autoload.php';
require __DIR__ . '/Support/Server.php';
require __DIR__ . '/Support/WorkerProcess.php';
require __DIR__ . '/Support/TestCase.php';
