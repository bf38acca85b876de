# A throwaway PostgreSQL server for the tests, to be sourced by a bash
# script: `start_test_postgres` starts one in a temporary folder on a free
# loopback port, exports DISPATCH_TEST_POSTGRES (its URL) and stops it and
# removes the folder when the script exits, on failure too.
#
# The server keeps fsync on, like a real one; only initdb skips its own
# fsyncs (-N), since a crash during the tests throws the cluster away anyway.
# As root, initdb, pg_ctl and the server run as the unprivileged `postgres`
# user (PostgreSQL refuses to run as root); otherwise as the caller.

# The folder holding initdb and pg_ctl: on the PATH, else `pg_config
# --bindir`, else the newest /usr/lib/postgresql/*/bin (Debian keeps them
# there, off the PATH).
find_postgres_bindir() {
    local dir
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Runs a PostgreSQL program as the user that owns the cluster.
_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_stop_test_postgres() {
    if [ -n "${_DISPATCH_PG_DIR:-}" ] && [ -d "$_DISPATCH_PG_DIR" ]; then
        if [ -f "$_DISPATCH_PG_DIR/data/postmaster.pid" ]; then
            _pg_as_owner "$_DISPATCH_PG_BIN/pg_ctl" -D "$_DISPATCH_PG_DIR/data" \
                -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$_DISPATCH_PG_DIR"
    fi
}

start_test_postgres() {
    local bindir started port attempt
    if ! bindir=$(find_postgres_bindir); then
        echo "error: the tests need PostgreSQL's server programs (initdb, pg_ctl), and none were found" >&2
        echo "       on the PATH, through pg_config or in /usr/lib/postgresql/*/bin; install them with:" >&2
        echo "           apt-get install postgresql" >&2
        return 1
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "error: as root the test cluster runs as the user postgres, which does not exist;" >&2
        echo "       install PostgreSQL with: apt-get install postgresql" >&2
        return 1
    fi
    started=$(date +%s%N)
    _DISPATCH_PG_BIN=$bindir
    _DISPATCH_PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/dispatch-pg.XXXXXX")
    trap _stop_test_postgres EXIT
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$_DISPATCH_PG_DIR"
        chmod 700 "$_DISPATCH_PG_DIR"
    fi
    if ! _pg_as_owner "$bindir/initdb" -D "$_DISPATCH_PG_DIR/data" -U postgres -A trust \
        -E UTF8 --locale=C -N >"$_DISPATCH_PG_DIR/initdb.log" 2>&1; then
        cat "$_DISPATCH_PG_DIR/initdb.log" >&2
        echo "error: initdb failed" >&2
        return 1
    fi
    # A random port in the dynamic range, tried again if another process
    # took it first.
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        if _pg_as_owner "$bindir/pg_ctl" -D "$_DISPATCH_PG_DIR/data" \
            -l "$_DISPATCH_PG_DIR/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $_DISPATCH_PG_DIR -c fsync=on -c max_connections=300" \
            start >/dev/null 2>&1; then
            export DISPATCH_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
            echo "== PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (started in $((($(date +%s%N) - started) / 1000000)) ms)"
            return 0
        fi
    done
    cat "$_DISPATCH_PG_DIR/server.log" >&2 || true
    echo "error: the test PostgreSQL did not start" >&2
    return 1
}

# For a test that restarts its own server: starts one, prints its URL on
# stdout, then reads commands from stdin (`restart`: a fast restart on the
# same port, answered `restarted`) until stdin closes, and stops it.
serve_test_postgres() {
    start_test_postgres >&2
    echo "$DISPATCH_TEST_POSTGRES"
    local cmd
    while read -r cmd; do
        case $cmd in
            restart)
                _pg_as_owner "$_DISPATCH_PG_BIN/pg_ctl" -D "$_DISPATCH_PG_DIR/data" \
                    -l "$_DISPATCH_PG_DIR/server.log" -m fast -w -t 60 restart >/dev/null
                echo restarted
                ;;
            *) echo "unknown command $cmd" >&2 ;;
        esac
    done
}
