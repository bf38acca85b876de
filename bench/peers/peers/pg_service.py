"""A throw-away PostgreSQL server shared by the PostgreSQL-backed peers
(graphile-worker, pg-boss) and Dispatch on PostgreSQL, like the tests' one
(``scripts/postgres-test-cluster.sh``): ``initdb`` in a temporary folder
(as the user ``postgres`` when run as root: PostgreSQL refuses root), the
server on a free 127.0.0.1 port, ``fsync=on`` at every level.

One server per driver invocation, started at first use and stopped by PID
(fast shutdown, then SIGKILL of its process group) when the driver ends.
Every workload of every run gets a fresh database on it (``fresh_database``),
dropped afterwards, and a checkpoint, so that no run writes back an earlier
one's pages.

The level sets ``synchronous_commit`` server-wide, changed with
``ALTER SYSTEM`` and a reload (no restart):

- durable: ``synchronous_commit=on``: a commit returns once its WAL is
  flushed to disk;
- relaxed: ``synchronous_commit=off``: a commit returns before its WAL is
  flushed; the WAL writer flushes it within ``3 x wal_writer_delay``
  (600 ms by default). A crash loses the last commits, never consistency;
- memory: n/a (PostgreSQL always writes its WAL; ``fsync=off`` is a risk of
  corruption, not a memory mode).

Every other setting is PostgreSQL's default, except ``max_connections=300``
(the tests' value)."""

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from common import free_port, wait_port

LEVELS = {
    "memory": "PostgreSQL always writes its WAL (fsync=off risks corruption; it is not a memory mode)",
    "relaxed": None,
    "durable": None,
}
SYNCHRONOUS_COMMIT = {"relaxed": "off", "durable": "on"}
SETTING = {
    "relaxed": "PostgreSQL fsync=on, synchronous_commit=off",
    "durable": "PostgreSQL fsync=on, synchronous_commit=on",
}


def bindir():
    """initdb's folder: on the PATH, else ``pg_config --bindir``, else the
    newest /usr/lib/postgresql/*/bin (Debian keeps them off the PATH)."""
    initdb = shutil.which("initdb")
    if initdb:
        # The real folder, with psql and postgres next to initdb (a PATH
        # entry may be a symbolic link).
        return os.path.dirname(os.path.realpath(initdb))
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if os.access(os.path.join(out, "initdb"), os.X_OK):
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    base = "/usr/lib/postgresql"
    if os.path.isdir(base):
        def version(v):
            try:
                return float(v)
            except ValueError:
                return 0.0
        for v in sorted(os.listdir(base), key=version, reverse=True):
            d = os.path.join(base, v, "bin")
            if os.access(os.path.join(d, "initdb"), os.X_OK):
                return d
    raise RuntimeError("PostgreSQL's server programs (initdb) were not found; apt-get install postgresql")


class Server:
    def __init__(self):
        self.proc = None
        self.level = None
        self.counter = 0

    def _owner(self):
        """``(uid, gid)`` to run PostgreSQL as, or None for the caller."""
        if os.getuid() != 0:
            return None
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("as root the benchmark runs PostgreSQL as the user postgres, which does not exist; "
                               "apt-get install postgresql") from None
        return pw.pw_uid, pw.pw_gid

    def _run_as_owner(self, argv, **kw):
        owner = self._owner()
        if owner:
            kw.update(user=owner[0], group=owner[1], extra_groups=[])
        return subprocess.run(argv, **kw)

    def start(self):
        self.bin = bindir()
        self.psql = os.path.join(self.bin, "psql")
        if not os.access(self.psql, os.X_OK):
            self.psql = shutil.which("psql") or self.psql
        self.dir = tempfile.mkdtemp(prefix="peers-postgres-")
        owner = self._owner()
        if owner:
            os.chown(self.dir, *owner)
            os.chmod(self.dir, 0o700)
        data = os.path.join(self.dir, "data")
        out = self._run_as_owner(
            [os.path.join(self.bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C", "-N"], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.port = free_port()
        log = open(os.path.join(self.dir, "server.log"), "ab")
        argv = [os.path.join(self.bin, "postgres"), "-D", data, "-c", "listen_addresses=127.0.0.1",
                "-p", str(self.port), "-k", self.dir, "-c", "fsync=on", "-c", "max_connections=300"]
        kw = {}
        if owner:
            kw.update(user=owner[0], group=owner[1], extra_groups=[])
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, **kw)
        log.close()
        atexit.register(self.stop)
        try:
            wait_port(self.port, timeout=60)
            # The port answers before the server accepts connections.
            deadline = time.monotonic() + 60
            while self.sql("select 1", check=False).returncode != 0:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start: " + self.log_tail())
                time.sleep(0.1)
        except Exception:
            self.stop()
            raise

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "server.log")) as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def url(self, db="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, statement, db="postgres", check=True):
        return subprocess.run(
            [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(db),
             "-c", statement], capture_output=True, text=True, check=check)

    def set_level(self, level):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if self.level != level:
            self.sql(f"ALTER SYSTEM SET synchronous_commit = {SYNCHRONOUS_COMMIT[level]}")
            self.sql("SELECT pg_reload_conf()")
            self.level = level

    def fresh_database(self, level):
        """A new empty database at ``level``; returns its URL."""
        self.set_level(level)
        self.counter += 1
        name = f"bench_{os.getpid()}_{self.counter}"
        self.sql(f"CREATE DATABASE {name}")
        self.sql("CHECKPOINT")
        return name, self.url(name)

    def drop_database(self, name):
        if self.proc is not None and self.proc.poll() is None:
            self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)

    def version(self):
        out = subprocess.run([os.path.join(bindir(), "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:
            # SIGINT: fast shutdown (clients are disconnected).
            try:
                os.kill(p.pid, signal.SIGINT)
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


SERVER = Server()


def stop():
    SERVER.stop()
