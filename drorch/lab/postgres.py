"""Real PostgreSQL 15 clusters for the lab and the tests.

The server refuses to run as root, so when we are root every server binary
runs through ``runuser -u postgres``; data directories are 0700 and owned by
that user. Server logs live outside the data directory because
``pg_basebackup`` would copy them. The postmaster PID is read from
``postmaster.pid`` (``runuser`` forks, its PID is not the server's).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from drorch.lab.ports import free_port
from drorch.procs import pid_alive

PG_BIN = Path(os.environ.get("DRORCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"

LAB_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "track_commit_timestamp": "on",
    "wal_log_hints": "on",
    "full_page_writes": "on",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "'512MB'",
    "hot_standby": "on",
    "fsync": "off",
    "synchronous_commit": "on",  # acknowledged = in the WAL (off loses commits on SIGKILL)
    "shared_buffers": "'32MB'",
    "max_connections": "60",
    "shared_preload_libraries": "''",
}


INITDB_ARGS = ["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
_template_lock = threading.Lock()


def initdb_template() -> Path | None:
    """A pristine ``initdb`` output kept once per user, binaries and arguments (in the
    temporary directory), built on first use: ``initdb`` takes seconds, copying its output
    a fraction, and the lab and every test make new clusters. Clusters copied from it
    share one system identifier, as a primary and its replicas do. None when
    ``DRORCH_LAB_INITDB_CACHE=0``."""
    if os.environ.get("DRORCH_LAB_INITDB_CACHE", "1") == "0":
        return None
    with _template_lock:
        version = run_pg_tool(["postgres", "--version"]).strip()
        key = hashlib.sha256(f"{PG_BIN}\0{version}\0{INITDB_ARGS}\0{LAB_SETTINGS}".encode()
                             ).hexdigest()[:12]
        root = Path(tempfile.gettempdir()) / f"drorch-initdb-{os.geteuid()}"
        template = root / key
        if _complete(template):
            return template
        root.mkdir(mode=0o755, exist_ok=True)
        os.chmod(root, 0o755)
        build = root / f"{key}.{os.getpid()}.{threading.get_ident()}"
        shutil.rmtree(build, ignore_errors=True)
        make_owned_dir(build)
        try:
            _build_template(build)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        if template.exists() and not _complete(template):  # broken (half deleted): replace
            shutil.rmtree(template, ignore_errors=True)
        try:
            os.rename(build, template)  # atomic: a template that exists is complete
        except OSError:  # another process made it first
            shutil.rmtree(build, ignore_errors=True)
        return template


def _copy(template: Path, datadir: Path) -> None:
    """The template's files into ``datadir``, owners and modes kept (``cp -a``)."""
    subprocess.run(["cp", "-a", f"{template}/.", str(datadir)], check=True,
                   capture_output=True)


def _complete(template: Path) -> bool:
    return all((template / p).exists() for p in (
        "PG_VERSION", "global/pg_control", "base", "pg_wal", "postgresql.conf"))


def _build_template(build: Path) -> None:
    """``initdb``, then one start and clean stop with the lab's settings."""
    run_pg_tool(["initdb", "-D", str(build), *INITDB_ARGS])
    # the socket in a short directory of its own: a long temporary path would exceed
    # the 107 bytes a Unix socket path may have
    sock = Path(tempfile.mkdtemp(prefix="drorch-s", dir="/tmp" if Path("/tmp").is_dir()
                                 else None))
    os.chmod(sock, 0o777)
    try:
        # Started once with the lab's settings and shut down cleanly, so its control file
        # records them: a standby cloned from it needs its max_connections etc. no lower
        # than the control file says.
        with open(build / "postgresql.conf", "a") as fh:
            fh.write("\n# drorch lab template\n" + "".join(
                f"{k} = {v}\n" for k, v in {**LAB_SETTINGS, "listen_addresses": "''",
                                            "unix_socket_directories": f"'{sock}'"}.items()))
        log = sock / "template.log"
        log.touch()
        if _is_root():
            shutil.chown(log, SUPERUSER, SUPERUSER)
        run_pg_tool(["pg_ctl", "-D", str(build), "-l", str(log), "-w", "-t", "60",
                     "-o", "-p 1", "start"], timeout=70)
        run_pg_tool(["pg_ctl", "-D", str(build), "-m", "fast", "-w", "stop"])
        (build / "postmaster.opts").unlink(missing_ok=True)
    finally:
        shutil.rmtree(sock, ignore_errors=True)


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed where we look."""


def pg_available() -> bool:
    return (PG_BIN / "postgres").exists() and (PG_BIN / "initdb").exists()


def _is_root() -> bool:
    return os.geteuid() == 0


def run_pg_tool(args: list[str], *, check: bool = True, timeout: float = 120) -> str:
    """Run a PostgreSQL binary, as the ``postgres`` user when we are root."""
    if not pg_available():
        raise PostgresUnavailable(f"PostgreSQL binaries not found in {PG_BIN}")
    cmd = [str(PG_BIN / args[0]), *args[1:]]
    if _is_root():
        cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def make_owned_dir(path: Path, mode: int = 0o700) -> None:
    """Create a directory the server user owns (0700 for data directories)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if _is_root():
        shutil.chown(path, SUPERUSER, SUPERUSER)


@dataclass
class PgNode:
    """One PostgreSQL cluster on 127.0.0.1 with its data, socket and log paths."""

    name: str
    datadir: Path
    port: int
    rundir: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def logfile(self) -> Path:
        return self.rundir / f"{self.name}.log"

    @property
    def sockdir(self) -> Path:
        return self.rundir / "sock"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname} connect_timeout=5"

    def _prepare_rundir(self) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.rundir, 0o755)
        make_owned_dir(self.sockdir, 0o755)
        if not self.logfile.exists():
            self.logfile.touch()
        if _is_root():
            shutil.chown(self.logfile, SUPERUSER, SUPERUSER)
        parent = self.datadir.parent
        parent.mkdir(parents=True, exist_ok=True)
        os.chmod(parent, 0o755)

    def _pin_own_settings(self) -> None:
        """Append settings that are per node; pg_rewind and basebackup copy the source's."""
        own = {
            **LAB_SETTINGS,
            **self.settings,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
        }
        with open(self.datadir / "postgresql.conf", "a") as fh:
            fh.write(f"\n# drorch lab: {self.name}\n")
            for key, value in own.items():
                fh.write(f"{key} = {value}\n")

    def init_primary(self) -> None:
        """A new cluster: a copy of the cached ``initdb`` output (see
        :func:`initdb_template`), or ``initdb`` itself when the cache is off."""
        self._prepare_rundir()
        make_owned_dir(self.datadir)
        template = initdb_template()
        if template is None:
            run_pg_tool(["initdb", "-D", str(self.datadir), *INITDB_ARGS])
        else:
            _copy(template, self.datadir)
        self._pin_own_settings()

    def init_standby_clone(self, primary: PgNode) -> bool:
        """Make this node a streaming standby of ``primary`` by copying the same cached
        ``initdb`` output ``primary`` was made from, before ``primary`` first starts: a
        cleanly shut down cluster is a valid base backup of itself ("Setting Up a Standby
        Server", PostgreSQL 15 docs, 27.2.4), and the copy saves a ``pg_basebackup``.
        False (nothing done) when the cache is off: use :meth:`init_replica_of`."""
        template = initdb_template()
        if template is None or primary.is_running() or primary.settings != self.settings:
            return False
        self._prepare_rundir()
        make_owned_dir(self.datadir)
        _copy(template, self.datadir)
        with open(self.datadir / "postgresql.auto.conf", "a") as fh:
            fh.write(f"primary_conninfo = 'user={SUPERUSER} host=127.0.0.1 "
                     f"port={primary.port}'\n")
        (self.datadir / "standby.signal").touch()
        if _is_root():
            shutil.chown(self.datadir / "standby.signal", SUPERUSER, SUPERUSER)
        self._pin_own_settings()
        return True

    def init_replica_of(self, primary: PgNode, slot: str | None = None) -> None:
        """Base-backup from ``primary`` and configure streaming (standby.signal)."""
        self._prepare_rundir()
        make_owned_dir(self.datadir)
        args = [
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", SUPERUSER,
            "-D", str(self.datadir), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        ]
        if slot:
            args += ["-S", slot, "-C"]
        run_pg_tool(args)
        self._pin_own_settings()

    def start(self, timeout: int = 60) -> None:
        self._prepare_rundir()
        run_pg_tool(
            ["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
             "-t", str(timeout), "start"],
            timeout=timeout + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            run_pg_tool(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop"], check=False)

    def pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0]
            pid = int(first)
        except (OSError, IndexError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def child_pids(self) -> list[int]:
        pid = self.pid()
        if pid is None:
            return []
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """Kill the region's database like a crash: postmaster and children, SIGKILL."""
        pid = self.pid()
        if pid is None:
            return
        children = self.child_pids()
        for p in [pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = [p for p in [pid, *children] if pid_alive(p)]
            if not alive:
                break
            time.sleep(0.02)
        # A crashed server's lock file would name a PID that may linger as a zombie
        # (PID 1 here reaps slowly) and make the next start refuse: drop it.
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)
        for name in (f".s.PGSQL.{self.port}", f".s.PGSQL.{self.port}.lock"):
            (self.sockdir / name).unlink(missing_ok=True)

    def signal_all(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the postmaster and its children (SIGSTOP makes probes hang)."""
        pid = self.pid()
        if pid is None:
            return
        for p in [pid, *self.child_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def destroy(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)


def init_pair(primary: PgNode, replica: PgNode) -> bool:
    """``primary`` made, and ``replica`` cloned as its standby side by side (two copies at
    once); False when the replica could not be cloned (make it with
    :meth:`PgNode.init_replica_of` once the primary runs)."""
    initdb_template()  # built once, before two threads want it
    with ThreadPoolExecutor(max_workers=1) as pool:
        clone = pool.submit(replica.init_standby_clone, primary)
        primary.init_primary()
        return clone.result()


def make_pair(workdir: Path, port_a: int | None = None, port_b: int | None = None,
              names: tuple[str, str] = ("region-a", "region-b")) -> tuple[PgNode, PgNode]:
    """Start a primary and a streaming replica of it; returns (primary, replica)."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    primary = PgNode(names[0], workdir / names[0] / "data", port_a or free_port(),
                     workdir / names[0])
    replica = PgNode(names[1], workdir / names[1] / "data", port_b or free_port(),
                     workdir / names[1])
    cloned = init_pair(primary, replica)
    primary.start()
    if not cloned:
        replica.init_replica_of(primary)
    replica.start()
    return primary, replica
