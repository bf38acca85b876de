#!/bin/sh
# An example command for `dispatch worker` (see ../worker.toml).
#
# Input: the task's payload as JSON on stdin, e.g.
#   {"image": "cat.png", "width": 800}
# and DISPATCH_TASK_ID, DISPATCH_TASK_TYPE, DISPATCH_ATTEMPT in the
# environment. Output: the result on stdout (JSON here). Errors go to
# stderr; their last lines become the task's error.
set -eu

payload=$(cat)
# A real script would use jq or a real language; sed keeps this one
# dependency-free.
image=$(printf '%s' "$payload" | sed -n 's/.*"image": *"\([^"]*\)".*/\1/p')
width=$(printf '%s' "$payload" | sed -n 's/.*"width": *\([0-9][0-9]*\).*/\1/p')

if [ -z "$image" ]; then
    echo "the payload has no \"image\"" >&2
    exit 100    # a bad payload will not get better: do not retry
fi
if [ -z "$width" ] || [ "$width" -gt "${MAX_WIDTH:-4096}" ]; then
    echo "width must be 1 to ${MAX_WIDTH:-4096}" >&2
    exit 100
fi

echo "resizing $image to $width px (task $DISPATCH_TASK_ID, attempt $DISPATCH_ATTEMPT)" >&2
sleep 0.1   # the work
printf '{"image": "%s", "width": %s, "resized": true}\n' "$image" "$width"
