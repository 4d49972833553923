"""Start and stop real Redis and PostgreSQL servers for the test session.

Everything listens on 127.0.0.1 only, lives in a temporary directory that is
removed on ``stop()``, and is also stopped by an ``atexit`` hook (and, on Linux,
by the kernel when the Python process dies) so a crashed session leaves nothing
running. Only processes started here are ever signalled, always by their pid.

No dependency on redis-py or psycopg: readiness checks speak a minimal RESP, or the first
messages of PostgreSQL's wire protocol, over a socket.

PostgreSQL refuses to run as root: under root (CI), ``initdb`` and ``postgres`` run as an
unprivileged account (``postgres``, which Debian's package creates, else ``tollway-pg``,
created here with ``useradd --system``) that owns the server's temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

HOST = "127.0.0.1"
CLUSTER_BUS_OFFSET = 10000
MAX_PORT = 65535

_live: dict[int, RedisServer | RedisCluster | PostgresServer] = {}


class ServerError(RuntimeError):
    """A test server could not be started or did not become ready."""


# --------------------------------------------------------------------------- ports


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def find_free_cluster_ports(count: int) -> list[int]:
    """``count`` ports P such that P and its cluster bus port P+10000 are both free."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(2000):
        port = random.randint(20000, MAX_PORT - CLUSTER_BUS_OFFSET)
        bus = port + CLUSTER_BUS_OFFSET
        if {port, bus} & taken or not (_port_is_free(port) and _port_is_free(bus)):
            continue
        ports.append(port)
        taken |= {port, bus}
        if len(ports) == count:
            return ports
    raise ServerError(f"could not find {count} free port pairs (P, P+{CLUSTER_BUS_OFFSET})")


# --------------------------------------------------------------------------- RESP


def _read_reply(reader: BinaryIO) -> object:
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise ServerError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        return reader.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read_reply(reader) for _ in range(size)]
    raise ServerError(f"unexpected RESP reply: {line!r}")


def command(
    port: int,
    *args: str,
    host: str = HOST,
    timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
) -> object:
    """Send one command and return its decoded reply (errors raise ServerError); ``tls``:
    over TLS with this context."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    with socket.create_connection((host, port), timeout=timeout) as plain:
        sock = plain if tls is None else tls.wrap_socket(plain, server_hostname=host)
        sock.sendall(payload)
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


def _serving_pid(port: int, tls: ssl.SSLContext | None = None) -> int | None:
    """pid of the redis-server answering on ``port`` (None if none answers yet)."""
    try:
        if command(port, "PING", timeout=0.5, tls=tls) != "PONG":
            return None
        info = command(port, "INFO", "server", timeout=0.5, tls=tls)
    except (OSError, ServerError):  # refused, reset, or -LOADING
        return None
    for line in str(info).splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


def _cluster_info(port: int) -> dict[str, str]:
    text = command(port, "CLUSTER", "INFO")
    assert isinstance(text, str)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def parse_cluster_url(url: str) -> list[tuple[str, int]]:
    """``redis+cluster://h1:p1[,h2:p2...]`` -> ``[(h1, p1), ...]``."""
    _, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        nodes.append((host.strip("[]") or HOST, int(port or 6379)))
    return nodes


# --------------------------------------------------------------------------- processes


def _die_with_parent_prefix() -> list[str]:
    """Linux: run the server through ``setpriv --pdeathsig TERM`` (util-linux, which
    execs in place, so the pid is the server's) so it gets SIGTERM when the thread that
    started it dies, even if the test process is SIGKILLed. Start servers from the
    main thread."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


def _require(executable: str) -> str:
    path = shutil.which(executable)
    if path is None:
        raise ServerError(
            f"{executable!r} is not on PATH. Run the tests with `bash scripts/test.sh`, "
            "which installs it (apt-get install redis-server redis-tools)."
        )
    return path


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (``--daemonize no``, we keep the Popen).

    ``stop()`` ends it and removes its directory; ``kill()`` SIGKILLs it (for failure
    tests) and keeps the directory; ``start()`` (again) restarts it on the same port.

    ``tls`` (`tls_support.TlsFiles`): TLS only (``--port 0 --tls-port PORT``), with that
    certificate; `url` is then ``rediss://...?ssl_ca_certs=CA``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        directory: Path | None = None,
        startup_timeout: float = 10.0,
        tls: Any = None,
    ) -> None:
        self.tls = tls
        self.port = port if port is not None else find_free_port()
        self.host = HOST
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._started_at = 0.0
        self._port_chosen_by_caller = port is not None
        self._given_dir = directory
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- info
    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{self.host}:{self.port}/0"

    def _tls_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca))

    def _port_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path | None:
        """The server's working directory (logs, cluster config), None once stopped."""
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._directory() / f"redis-{self.port}.log"

    def _directory(self) -> Path:
        if self._dir is None:
            if self._given_dir is not None:
                self._given_dir.mkdir(parents=True, exist_ok=True)
                self._dir = self._given_dir
            else:
                self._dir = Path(tempfile.mkdtemp(prefix=f"tollway-redis-{self.port}-"))
        return self._dir

    # -- lifecycle
    def start(self) -> RedisServer:
        """Start (or restart) the server and wait until it answers PING."""
        if self.running:
            return self
        for attempt in range(5):
            self.spawn()
            try:
                self.wait_ready()
                break
            except ServerError as exc:
                self.stop()  # the error message carries the log tail
                retry = not self._port_chosen_by_caller and attempt < 4
                if not (retry and "Address already in use" in str(exc)):
                    raise
                self.port = find_free_port()  # someone took the port first: pick again
        self._port_chosen_by_caller = True  # restarts keep this port
        return self

    def spawn(self) -> None:
        """Start the process without waiting (see ``wait_ready``)."""
        executable = _require("redis-server")
        directory = self._directory()
        args = [
            *_die_with_parent_prefix(),
            executable,
            *self._port_args(),
            "--bind", self.host,
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        self.startup_seconds = None
        self._started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C hits pytest, which then stops us cleanly
            )
        _live[id(self)] = self

    def wait_ready(self) -> None:
        deadline = self._started_at + self.startup_timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise ServerError(
                    f"redis-server on port {self.port} exited (code {code}):\n"
                    f"{_log_tail(self.log_path)}"
                )
            # the pid check makes sure it is our server, not another one on this port
            if _serving_pid(self.port, self._tls_context()) == proc.pid:
                self.startup_seconds = time.monotonic() - self._started_at
                return
            if time.monotonic() > deadline:
                self._signal_and_wait(signal.SIGKILL)
                raise ServerError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{self.startup_timeout:.0f}s:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.01)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)  # this pid only
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (simulated crash). The directory is kept; ``start()`` again."""
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), then remove the temporary directory."""
        self._signal_and_wait(signal.SIGTERM)
        self._remove_dir()
        _live.pop(id(self), None)

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid})"


class RedisCluster:
    """A real Redis Cluster of ``masters`` masters, no replicas, on 127.0.0.1."""

    def __init__(
        self,
        masters: int = 3,
        *,
        node_timeout_ms: int = 5000,
        startup_timeout: float = 20.0,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.nodes: list[RedisServer] = []
        self._dir: Path | None = None

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        if not self.nodes:
            raise ServerError("cluster not started")
        return f"redis+cluster://{self.nodes[0].host}:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        if self.nodes:
            return self
        started = time.monotonic()
        for attempt in range(3):
            try:
                self._start_once()
                break
            except ServerError as exc:
                self.stop()
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_once(self) -> None:
        redis_cli = _require("redis-cli")
        self._dir = Path(tempfile.mkdtemp(prefix="tollway-redis-cluster-"))
        _live[id(self)] = self
        for port in find_free_cluster_ports(self.masters):
            cluster_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
            ]  # fmt: skip
            node = RedisServer(port, directory=self._dir / str(port), extra_args=cluster_args)
            self.nodes.append(node)
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready()

        create = [
            redis_cli, "--cluster", "create",
            *(f"{node.host}:{node.port}" for node in self.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                create,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.startup_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"`{' '.join(create)}` timed out") from exc
        if result.returncode != 0:
            raise ServerError(
                f"`{' '.join(create)}` failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        self._wait_ok(started=time.monotonic())

    def _wait_ok(self, started: float) -> None:
        want = {
            "cluster_state": "ok",
            "cluster_slots_assigned": "16384",
            "cluster_slots_ok": "16384",
            "cluster_known_nodes": str(self.masters),
            "cluster_size": str(self.masters),
        }
        infos: dict[int, dict[str, str]] = {}
        while True:
            for node in self.nodes:
                if not node.running:
                    raise ServerError(f"cluster node {node.port} died:\n{_log_tail(node.log_path)}")
                try:
                    infos[node.port] = _cluster_info(node.port)
                except (OSError, ServerError):
                    infos[node.port] = {}
            if all(
                all(info.get(key) == value for key, value in want.items())
                for info in infos.values()
            ):
                return
            if time.monotonic() - started > self.startup_timeout:
                raise ServerError(
                    f"cluster not ok within {self.startup_timeout:.0f}s: "
                    + "; ".join(
                        f"{port}: state={info.get('cluster_state')} "
                        f"known={info.get('cluster_known_nodes')} "
                        f"slots_ok={info.get('cluster_slots_ok')}"
                        for port, info in infos.items()
                    )
                )
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _live.pop(id(self), None)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisCluster(ports={self.ports})"


# --------------------------------------------------------------------------- PostgreSQL

PG_USER = "postgres"
"""The database superuser that ``initdb`` creates (trust auth on loopback: no password)."""
PG_DATABASE = "postgres"
PG_FALLBACK_ACCOUNT = "tollway-pg"
PG_ACCOUNTS = ("postgres", PG_FALLBACK_ACCOUNT)
"""Accounts to run PostgreSQL as under root, in order of preference (Debian's first)."""
_PG_PROTOCOL = 196608  # 3.0
# A new postmaster can fail while the one before it is still going away: try again.
_PG_TRANSIENT = ("Address already in use", "shared memory block", "lock file")


def _require_pg(executable: str) -> str:
    """``initdb``/``postgres``/``pg_ctl`` from PATH, else Debian's /usr/lib/postgresql/N/bin."""
    path = shutil.which(executable)
    if path is not None:
        return path
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{executable}"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return found[-1]
    raise ServerError(
        f"{executable!r} is not on PATH nor in /usr/lib/postgresql/*/bin. Run the tests with "
        "`bash scripts/test.sh`, which installs it (apt-get install postgresql)."
    )


def pg_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run PostgreSQL as when we are root (None when not root):
    ``postgres`` if it exists, else ``tollway-pg``, created on first use."""
    if os.geteuid() != 0:
        return None
    for name in PG_ACCOUNTS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", PG_FALLBACK_ACCOUNT],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        return pwd.getpwnam(PG_FALLBACK_ACCOUNT)  # made now, or by a concurrent session
    except KeyError:
        raise ServerError(
            f"running as root, and could not create the account {PG_FALLBACK_ACCOUNT!r} to run "
            f"PostgreSQL as ({useradd} exited {result.returncode}): {result.stderr.strip()}"
        ) from None


def _pg_env() -> dict[str, str]:
    # No PG* variables of the caller's (PGDATA, PGPORT...) and a locale that always exists.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def pg_handshake(port: int, *, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when the server on ``port`` accepts a connection of `PG_USER` to `PG_DATABASE`
    without a password (StartupMessage -> AuthenticationOk ... ReadyForQuery)."""
    params = f"user\0{PG_USER}\0database\0{PG_DATABASE}\0\0".encode()
    body = struct.pack("!I", _PG_PROTOCOL) + params
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("!I", len(body) + 4) + body)
            with sock.makefile("rb") as reader:
                while True:
                    head = reader.read(5)
                    if len(head) < 5:
                        return False
                    kind, size = head[:1], struct.unpack("!I", head[1:])[0]
                    payload = reader.read(size - 4)
                    if kind == b"E":  # "the database system is starting up", ...
                        return False
                    if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                        raise ServerError(f"PostgreSQL on port {port} asks for a password")
                    if kind == b"Z":
                        sock.sendall(b"X\0\0\0\x04")  # Terminate
                        return True
    except OSError:
        return False


class PostgresServer:
    """One PostgreSQL postmaster on 127.0.0.1, in a temporary directory of its own.

    ``initdb`` (superuser `PG_USER`, trust auth, UTF8, C locale) runs on the first start; the
    postmaster runs in the foreground (we keep its Popen, so every signal goes to its pid).
    ``stop()`` is a fast shutdown and removes the directory; ``kill()`` is an immediate
    shutdown (SIGQUIT: every backend ends at once, no checkpoint: crash recovery on the next
    start), keeping the directory; ``start()`` again restarts it on the same port.

    ``durable=False`` (the default, for tests) turns fsync and full-page writes off (safe
    against a crash of the server, not of the machine); ``durable=True`` keeps PostgreSQL's
    defaults (for benchmarks).

    ``tls`` (`tls_support.TlsFiles`): ``ssl=on`` with that certificate (copied into the
    server's directory, owned by its account); plain connections are still taken, so a
    client's ``sslmode`` decides.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        durable: bool = False,
        extra_settings: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
        tls: Any = None,
    ) -> None:
        self.tls = tls
        self.port = port if port is not None else find_free_port()
        self.host = HOST
        self.durable = durable
        self.extra_settings = dict(extra_settings or {})
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.account = pg_account()
        """The account the server runs as when we are root (None: as ourselves)."""
        self._port_chosen_by_caller = port is not None
        self._started_at = 0.0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- info
    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{PG_DATABASE}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path | None:
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self._directory() / "data"

    @property
    def log_path(self) -> Path:
        return self._directory() / f"postgres-{self.port}.log"

    def _directory(self) -> Path:
        if self._dir is None:
            # Under root the server's account must reach the directory: /tmp, not a TMPDIR
            # that may sit in root's home.
            base = "/tmp" if self.account is not None and os.path.isdir("/tmp") else None
            self._dir = Path(tempfile.mkdtemp(prefix="tollway-pg-", dir=base))
            if self.account is not None:
                os.chown(self._dir, self.account.pw_uid, self.account.pw_gid)
        return self._dir

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": self._directory(), "env": _pg_env()}
        if self.account is not None:
            kwargs.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return kwargs

    # -- lifecycle
    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        args = [
            _require_pg("initdb"), "-D", str(self.data_dir), "-U", PG_USER,
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    timeout=120, check=False, **self._popen_kwargs(),
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                raise ServerError(f"initdb timed out:\n{_log_tail(self.log_path)}") from exc
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed ({result.returncode}) as "
                f"{self.account.pw_name if self.account else 'the current user'}:\n"
                f"{_log_tail(self.log_path)}"
            )

    def start(self) -> PostgresServer:
        """Start (or restart) the server and wait until it takes connections."""
        if self.running:
            return self
        started = time.monotonic()
        self._initdb()
        while True:
            self.spawn()
            try:
                self.wait_ready()
                break
            except ServerError as exc:
                transient = any(text in str(exc) for text in _PG_TRANSIENT)
                if not transient or time.monotonic() - started > self.startup_timeout:
                    self._signal_and_wait(signal.SIGQUIT)
                    raise
                if "Address already in use" in str(exc) and not self._port_chosen_by_caller:
                    self.port = find_free_port()  # someone took the port first: pick again
                time.sleep(0.2)
        self._port_chosen_by_caller = True  # restarts keep this port
        self.startup_seconds = time.monotonic() - started
        return self

    def spawn(self) -> None:
        """Start the postmaster without waiting (see ``wait_ready``)."""
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self._directory()),
            "max_connections": "50",
        }
        if not self.durable:
            # A crash of the server process alone loses nothing even so: the OS keeps what
            # was written. (synchronous_commit stays on: off would lose commits in a kill().)
            settings.update(fsync="off", full_page_writes="off")
        if self.tls is not None:
            settings.update(self._tls_settings())
        settings.update(self.extra_settings)
        args = [*_die_with_parent_prefix(), _require_pg("postgres"), "-D", str(self.data_dir),
                "-p", str(self.port)]  # fmt: skip
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self._started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C hits pytest, which then stops us cleanly
                **self._popen_kwargs(),
            )
        _live[id(self)] = self

    def _tls_settings(self) -> dict[str, str]:
        """The certificate and key where the server's account can read them (the key 0600:
        PostgreSQL refuses a key others can read)."""
        folder = self._directory() / "tls"
        folder.mkdir(exist_ok=True)
        cert, key = folder / "server.pem", folder / "server.key"
        shutil.copyfile(self.tls.cert, cert)
        shutil.copyfile(self.tls.key, key)
        key.chmod(0o600)
        if self.account is not None:
            for path in (folder, cert, key):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        return {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}

    def _postmaster_ready(self, pid: int) -> bool:
        # pg_ctl's own test: postmaster.pid names our pid and says "ready" (line 8).
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def wait_ready(self) -> None:
        deadline = self._started_at + self.startup_timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                self._proc = None
                raise ServerError(
                    f"postgres on port {self.port} exited (code {code}):\n"
                    f"{_log_tail(self.log_path)}"
                )
            if self._postmaster_ready(proc.pid) and pg_handshake(self.port):
                return
            if time.monotonic() > deadline:
                self._signal_and_wait(signal.SIGQUIT)
                raise ServerError(
                    f"postgres on port {self.port} did not take connections within "
                    f"{self.startup_timeout:.0f}s:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        for signum in (sig, signal.SIGQUIT, signal.SIGKILL):
            if proc.poll() is not None:
                break
            proc.send_signal(signum)  # this pid only; the postmaster ends its own backends
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        proc.wait(timeout=timeout)
        self._proc = None

    def kill(self) -> None:
        """Immediate shutdown (simulated crash): connections drop at once, no checkpoint. The
        directory is kept; ``start()`` again (crash recovery runs then)."""
        self._signal_and_wait(signal.SIGQUIT)

    def stop(self) -> None:
        """Fast shutdown (SIGINT; SIGQUIT, then SIGKILL, after 10 s each), then remove the
        temporary directory."""
        self._signal_and_wait(signal.SIGINT)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _live.pop(id(self), None)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        user = f", user={self.account.pw_name!r}" if self.account else ""
        return f"PostgresServer(port={self.port}, pid={self.pid}{user})"


@atexit.register
def stop_all() -> None:
    """Stop every server still running (crashed or interrupted sessions)."""
    for server in list(_live.values()):
        with contextlib.suppress(Exception):
            server.stop()
