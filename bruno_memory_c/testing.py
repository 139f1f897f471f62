"""Throwaway redis-server instances for tests.

``RedisServer`` starts a real ``redis-server`` on a free loopback port, in a private
temporary directory, without persistence, and stops it (and removes the directory)
afterwards::

    from bruno_memory_c.testing import RedisServer

    with RedisServer() as server:
        cache = RedisCache.from_url(server.url)
        ...

It can also misbehave on purpose, for fault tests: ``kill()`` (SIGKILL), ``restart()``
on the same port, ``stall(seconds)``, ``command(...)`` for anything else (``CONFIG SET``,
``CLIENT KILL``, ...). With pytest, use the ``redis_server`` fixture from
``bruno_memory_c.testing`` (``pytest_plugins = ["bruno_memory_c.testing"]``).

``stall(seconds)`` stops the server process (SIGSTOP) and returns once it has stopped
(every thread of it, as ``/proc`` reports), so the stall has certainly begun: from then
on the kernel still accepts connections and buffers what clients send, and nothing is
read or answered. A thread it returns resumes the server (SIGCONT) after ``seconds``;
``join()`` it to wait for the end, or ``cancel()`` it to end the stall at once (a test
can stall for longer than it needs and end the stall when it has checked what it wanted;
``with server.stall(60): ...`` ends it with the block).
Overlapping stalls end when the last one does; ``kill()``, ``stop()``, ``restart()`` and
``close()`` end every stall. ``unread_bytes()`` tells, for each client connection, how
many bytes the server has not read yet (the kernel's receive queue, also while stalled):
what a client has sent and the server not yet seen.

``RedisServer(tls=True)`` serves TLS only (``--port 0 --tls-port``), with a CA, a
server certificate (``localhost`` and ``127.0.0.1``) and a client certificate made for
it at start by the ``openssl`` command (``make_tls_files``); ``server.url`` is then a
``rediss://`` URL naming the CA, ``server.tls_kwargs`` the keyword arguments a
``RedisCache`` needs (``{}`` without TLS), and ``tls_auth_clients="yes"`` makes the
server require the client certificate (mutual TLS). ``tls_files=`` serves files made
once by ``make_tls_files`` instead (a suite shares them between its servers).
``connect()`` opens a raw client connection (TLS when the server serves TLS).
``plain_port_too=True`` (with ``tls=True``) makes the same server also serve plaintext on
``server.plain_port`` (``--port``), e.g. to compare both on one server.

``SentinelGroup()`` starts a Sentinel setup on loopback ports: a primary, a replica of
it (``replicaof``) and three sentinels (``redis-server <conf> --sentinel``, each with a
writable configuration file of its own) monitoring it as ``mymaster`` with quorum 2,
``down-after-milliseconds`` 1000 and ``failover-timeout`` 3000; ``start()`` returns once
the sentinels know the replica and each other, so a failover can happen at once.
``sentinels`` is the ``[(host, port), ...]`` a ``RedisCache`` takes, ``primary()`` the
server the sentinels name now, ``failover()`` asks for a failover (``SENTINEL FAILOVER``)
and ``wait_primary_changed(port)`` waits for the sentinels to name another server.
``close()`` (or the end of a ``with`` block, or the collector, or interpreter exit)
stops every process, also after a failed start.

``RedisCluster()`` starts a Redis Cluster on loopback ports: 3 primaries and 3 replicas
(``redis-server --cluster-enabled yes``, ``cluster-node-timeout`` 1000 ms, each in a
directory of its own), made one by ``redis-cli --cluster create ... --cluster-replicas 1
--cluster-yes``; ``start()`` returns once every node says ``cluster_state:ok``, all agree
on the 16384 slots and every replica is in sync (about 2.5 s). ``startup_nodes`` and
``url`` are what a client takes; ``kill(node)``, ``restart(node)``, ``wait_ok()`` for
fault tests, ``migrate_slot()`` / ``move_slots()`` for resharding; ``tls=True`` as for ``RedisServer``. Fixture: ``redis_cluster``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import weakref
from typing import Any, Iterator, NamedTuple

__all__ = ["RedisServer", "RedisCluster", "SentinelGroup", "SlotMigration", "Stall", "TLSFiles", "make_tls_files",
           "redis_server", "redis_cluster", "free_port", "refused_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the duration of the block.

    Unlike a port from ``free_port()``, nothing else can start listening on it
    meanwhile (another test worker's server, say): this process keeps it bound,
    without listening, until the block ends."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _conf_quote(value: str) -> str:
    """value as one double-quoted redis.conf argument: printable ASCII as is, every
    other byte of its UTF-8 (and the quote and backslash) escaped."""
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def _encode(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"bad reply {line!r}")


class _PortTaken(Exception):
    pass


def _cleanup(state: dict[str, Any]) -> None:
    """Kill a server's process and remove its directory (close(), the collector or
    interpreter exit: whichever comes first)."""
    proc = state.pop("proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(state["dir"], ignore_errors=True)


_VERSIONS: dict[str, int] = {}


def _server_major(executable: str) -> int:
    """The major version of a redis-server executable (0 if unknown), cached."""
    if executable not in _VERSIONS:
        try:
            out = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout
            _VERSIONS[executable] = int(out.split("v=", 1)[1].split(".", 1)[0])
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            _VERSIONS[executable] = 0
    return _VERSIONS[executable]


def _thread_states(pid: int) -> list[str]:
    """The scheduler state letter of every thread of process pid (``/proc``); [] when
    the process is gone."""
    states = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # a thread that just exited
        # "tid (comm) S ...": the name may hold spaces and parentheses
        states.append(stat[stat.rindex(b")") + 2:][:1].decode())
    return states


def _wait_stopped(proc: "subprocess.Popen[bytes]", timeout: float = 30.0) -> None:
    """Return once every thread of proc is stopped (state T), which SIGSTOP brings
    about asynchronously; RuntimeError if the process exits or never stops."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited instead of stopping")
        states = _thread_states(proc.pid)
        if states and all(state in "tT" for state in states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not stop (thread states {states})")
        time.sleep(0.001)


class TLSFiles(NamedTuple):
    """PEM files made by ``make_tls_files`` (paths)."""
    ca_file: str             # the CA's certificate: what a client trusts
    ca_key_file: str
    cert_file: str           # the server's certificate and key
    key_file: str
    client_cert_file: str    # a client certificate (mutual TLS) and its key
    client_key_file: str


def _openssl(*args: str, cwd: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError(
            "openssl not found: install it (Debian: apt-get install openssl)")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_tls_files(directory: str, names: tuple[str, ...] = ("localhost", "127.0.0.1"),
                   ca: TLSFiles | None = None, prefix: str = "", days: int = 2) -> TLSFiles:
    """A CA (or ``ca``'s), a server certificate for ``names`` (DNS names and IP
    addresses) and a client certificate, both signed by it, as PEM files in
    ``directory`` (file names start with ``prefix``). EC P-256 keys, unencrypted;
    ``days`` < 0 makes certificates that expired."""
    os.makedirs(directory, exist_ok=True)
    path = lambda name: os.path.join(directory, prefix + name)  # noqa: E731
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if ca is None:
        _openssl("req", "-x509", "-new", *key, "-keyout", path("ca.key"), "-out", path("ca.crt"),
                 "-days", "2", "-subj", "/CN=bruno_memory_c test CA", cwd=directory)
        ca_file, ca_key = path("ca.crt"), path("ca.key")
    else:
        ca_file, ca_key = ca.ca_file, ca.ca_key_file
    sans = ",".join(("IP:" if _is_ip(n) else "DNS:") + n for n in names)
    for who, cn, ext in (("server", names[0] if names else "nobody",
                          f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"),
                         ("client", "bruno_memory_c test client",
                          "extendedKeyUsage=clientAuth\n")):
        with open(path(who + ".ext"), "w", encoding="ascii") as f:
            f.write(ext)
        _openssl("req", "-new", *key, "-keyout", path(who + ".key"), "-out", path(who + ".csr"),
                 "-subj", f"/CN={cn}", cwd=directory)
        validity = ["-days", str(days)] if days > 0 else ["-days", "1"]
        _openssl("x509", "-req", "-in", path(who + ".csr"), "-CA", ca_file, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", path(who + ".crt"), *validity,
                 "-extfile", path(who + ".ext"), cwd=directory)
        if days <= 0:  # backdated: valid from -2 days to -1 day
            # (`openssl ca`: `x509 -not_before` needs OpenSSL 3.4)
            _backdate(path(who + ".csr"), path(who + ".crt"), path(who + ".ext"), ca_file,
                      ca_key, os.path.join(directory, prefix + who + "-ca"))
    return TLSFiles(ca_file, ca_key, path("server.crt"), path("server.key"),
                    path("client.crt"), path("client.key"))


def _backdate(csr: str, crt: str, ext: str, ca_file: str, ca_key: str, work: str) -> None:
    """crt: csr signed by the CA, valid from two days ago to yesterday (expired)."""
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "ca.cnf"), "w", encoding="ascii") as f:
        f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\n"
                "serial = serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
                "[p]\ncommonName = supplied\n")
    open(os.path.join(work, "index.txt"), "w").close()
    with open(os.path.join(work, "serial"), "w", encoding="ascii") as f:
        f.write("%016X\n" % int.from_bytes(os.urandom(7), "big"))
    stamp = lambda t: time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))  # noqa: E731
    _openssl("ca", "-batch", "-config", "ca.cnf", "-notext", "-cert", ca_file,
             "-keyfile", ca_key, "-in", csr, "-out", crt, "-extfile", ext,
             "-startdate", stamp(time.time() - 2 * 86400),
             "-enddate", stamp(time.time() - 86400), cwd=work)


def _is_ip(name: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
            return True
        except OSError:
            pass
    return False


class Stall(threading.Thread):
    """A stall of a RedisServer under way (what ``RedisServer.stall()`` returns): the
    thread that resumes the server when the stall ends. ``join()`` waits for that;
    ``cancel()`` ends the stall now; as a context manager (``with server.stall(60):``)
    it ends the stall when the block ends."""

    def __init__(self, server: "RedisServer", proc: "subprocess.Popen[bytes]",
                 seconds: float) -> None:
        super().__init__(name=f"redis-stall-{proc.pid}", daemon=True)
        self.seconds = seconds
        self._server = server
        self._proc = proc
        self._ended = threading.Event()

    def run(self) -> None:
        self._ended.wait(self.seconds)
        self._server._stall_ended(self, self._proc)

    def cancel(self) -> None:
        """End the stall at once (the server resumes, unless another stall of it is
        still under way) and wait until it has. Idempotent."""
        self._ended.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()

    def __enter__(self) -> "Stall":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class RedisServer:
    """A redis-server process of one's own (see the module docstring).

    Its directory (``dir``: the server's working directory and unix socket) is removed
    by ``close()`` / the end of a ``with`` block, and in any case when the object is
    collected or the interpreter exits, as is a server still running then.
    """

    _cluster_enabled = False  # (a cluster node's port must stay below 55536)

    def __init__(self, password: str | None = None, port: int | None = None,
                 extra_args: tuple[str, ...] = (), executable: str | None = None,
                 unix_socket: bool = False, tls: bool = False,
                 tls_auth_clients: str = "optional",
                 tls_files: TLSFiles | None = None, plain_port_too: bool = False) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(
                "redis-server not found: install it (Debian: apt-get install redis-server)")
        self.executable: str = found
        self.password = password
        self._port_chosen = port is None  # ours to change if it turns out taken
        self.extra_args = tuple(extra_args)
        self.port = port or self._free_port()
        self.dir = tempfile.mkdtemp(prefix="bruno-redis-")
        self.unix_path = os.path.join(self.dir, "redis.sock") if unix_socket else None
        if tls_auth_clients not in ("no", "optional", "yes"):
            raise ValueError("tls_auth_clients must be 'no', 'optional' or 'yes'")
        self.tls_auth_clients = tls_auth_clients
        if plain_port_too and not tls:
            raise ValueError("plain_port_too needs tls=True")
        #: With ``plain_port_too``, the plaintext port the TLS server also serves.
        self.plain_port: int | None = free_port() if plain_port_too else None
        self.tls: TLSFiles | None = None
        if tls and tls_files is not None:
            self.tls = tls_files  # made by the caller (shared by several servers)
        elif tls:
            try:
                self.tls = make_tls_files(os.path.join(self.dir, "tls"))
            except BaseException:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise
        self._state: dict[str, Any] = {"dir": self.dir}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)
        self._stalls: set[Stall] = set()
        self._stall_lock = threading.Lock()


    def _free_port(self) -> int:
        """A free port; a cluster-enabled server's below 55536 (Redis refuses a higher
        one there: the old cluster bus port, port + 10000, must exist)."""
        for _ in range(1000):
            port = free_port()
            if port <= 55535 or not (self._cluster_enabled or
                                     "--cluster-enabled" in self.extra_args):
                return port
        raise RuntimeError("no free port below 55536 for a cluster-enabled server")
    @property
    def proc(self) -> "subprocess.Popen[bytes] | None":
        """The running server process, or None."""
        return self._state.get("proc")

    @proc.setter
    def proc(self, value: "subprocess.Popen[bytes] | None") -> None:
        self._state["proc"] = value

    # -- lifecycle --------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:port/0``, the password percent-encoded (any
        character, ``@ : / % # ?`` included, survives ``RedisCache.from_url``)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            ca = urllib.parse.quote(self.tls.ca_file, safe="/")
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """What a RedisCache needs to reach this server besides host and port: ``{}``
        without TLS; with TLS, ``ssl=True`` and the CA (and the client certificate when
        the server requires one)."""
        if self.tls is None:
            return {}
        kw: dict[str, Any] = {"ssl": True, "ssl_ca_certs": self.tls.ca_file}
        if self.tls_auth_clients == "yes":
            kw.update(ssl_certfile=self.tls.client_cert_file,
                      ssl_keyfile=self.tls.client_key_file)
        return kw

    def _config_file(self) -> str:
        """The server's secrets, in a file only we can read (mode 0600, in the private
        directory) instead of on its command line, which any local user can read
        (``ps``, ``/proc/<pid>/cmdline``). Rewritten at each start: the current password."""
        path = os.path.join(self.dir, "redis.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), 0o600)
            if self.password:
                f.write(f"requirepass {_conf_quote(self.password)}\n")
        return path

    def _args(self) -> list[str]:
        # The configuration file must be the first argument; options after it add to
        # (and override) it.
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", str(self.plain_port or 0), "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls.cert_file, "--tls-key-file", self.tls.key_file,
                     "--tls-ca-cert-file", self.tls.ca_file,
                     "--tls-auth-clients", self.tls_auth_clients]
        args = [self.executable, self._config_file(), *ports,
                "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--loglevel", "warning",
                "--logfile", os.path.join(self.dir, "redis.log")]
        if _server_major(self.executable) >= 7:  # DEBUG is off by default since 7.0
            args += ["--enable-debug-command", "local"]
        if self.unix_path:
            args += ["--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start the server and wait until it answers; returns self. A port that
        turns out to be taken is replaced by another free one (unless it was given)."""
        for _ in range(5):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if not self._port_chosen:
                    raise RuntimeError(f"port {self.port} is in use") from None
                self.port = self._free_port()
                if self.plain_port is not None:
                    self.plain_port = free_port()
        raise RuntimeError("no free port for redis-server")

    def _start_once(self, timeout: float) -> "RedisServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        # The server is not ours to instrument: no preloaded sanitizer runtime.
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
        with open(os.path.join(self.dir, "stderr.log"), "wb") as err:
            self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Answered by our process, not by another server on that port.
                if self.proc.poll() is None and self._server_pid() == self.proc.pid:
                    return self
            except (OSError, RuntimeError, ConnectionError, ValueError):
                pass
            if self.proc.poll() is not None:
                proc, self.proc = self.proc, None
                why = self._failure()
                if "Address already in use" in why:
                    raise _PortTaken()
                raise RuntimeError(f"redis-server exited with {proc.returncode}: {why}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("redis-server did not start")
            time.sleep(0.02)

    def _server_pid(self) -> int:
        info = self.command("INFO", "server")
        for line in info.decode().splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        return -1

    def _failure(self) -> str:
        """Why a server exited: the end of its stderr and log."""
        text = ""
        for name in ("stderr.log", "redis.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f.read() + "\n"
            except OSError:
                pass
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return " / ".join(lines[-3:]) or "no message"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        self._end_stalls()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(OSError):  # a process stopped by other means
                self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would. A stalled server dies stalled (it
        answers nothing more), and its stalls end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self._end_stalls()

    def restart(self) -> None:
        """Start again on the same port (after kill() or stop())."""
        self.stop()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except RuntimeError:  # the port may linger for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        self.stop()
        self._finalizer()

    def __enter__(self) -> "RedisServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- talking to it ----------------------------------------------------------
    def command(self, *args: Any, timeout: float = 10.0) -> Any:
        """Run one command on a fresh connection (authenticating if needed)."""
        with self._connect(timeout) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(_encode("AUTH", self.password))
                _read_reply(f)
            s.sendall(_encode(*args))
            return _read_reply(f)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A new blocking client connection to the server (with TLS: handshake done,
        with the client certificate), for a test's raw traffic (MONITOR, ...)."""
        return self._connect(timeout)

    def _connect(self, timeout: float) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls is None:
            return s
        context = ssl.create_default_context(cafile=self.tls.ca_file)
        # Our own server (start() checks its pid), whatever its certificate is: a test
        # may serve one made for another host, expired, or from another CA.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(self.tls.client_cert_file, self.tls.client_key_file)
        try:
            return context.wrap_socket(s, server_hostname="127.0.0.1")
        except BaseException:
            s.close()
            raise

    def stall(self, seconds: float) -> Stall:
        """Stop the server (SIGSTOP) without blocking the caller, for ``seconds``.

        Returns once the server has stopped, as the kernel reports: the stall has begun.
        The returned thread (a ``Stall``) resumes the server (SIGCONT) after ``seconds``;
        ``join()`` it to wait for that, ``cancel()`` it to end the stall now. While
        stalled, the server accepts connections (the kernel does) and reads and answers
        nothing, as under a long ``DEBUG SLEEP``; its clock runs on, so keys expire."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("the server is not running: nothing to stall")
        stall = Stall(self, proc, seconds)
        with self._stall_lock:
            self._stalls.add(stall)
            proc.send_signal(signal.SIGSTOP)
        try:
            _wait_stopped(proc)
        except BaseException:
            stall.cancel()
            self._stall_ended(stall, proc)
            raise
        stall.start()
        return stall

    def _stall_ended(self, stall: Stall, proc: "subprocess.Popen[bytes]") -> None:
        """A stall is over: resume the server unless another stall still holds it."""
        with self._stall_lock:
            self._stalls.discard(stall)
            if not self._stalls:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGCONT)  # (nothing once it has exited)

    def _end_stalls(self) -> None:
        with self._stall_lock:
            stalls = list(self._stalls)
        for stall in stalls:
            stall.cancel()  # (its thread resumes the server, unless another stall holds it)

    def unread_bytes(self) -> dict[int, int]:
        """{client port: bytes it sent that the server has not read yet}, for every TCP
        connection to the server (the kernel's receive queue, from ``/proc/net/tcp``;
        Linux).
        While the server is stalled this is what each client has sent it since."""
        out: dict[int, int] = {}
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f)  # header
            for line in f:
                fields = line.split()
                local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
                if state != "01" or int(local.split(":")[1], 16) != self.port:
                    continue  # not an established connection to our port
                out[int(remote.split(":")[1], 16)] = int(queues.split(":")[1], 16)
        return out


class _Sentinel:
    """One sentinel process (``redis-server sentinel.conf --sentinel``); with ``tls``,
    TLS only (``port 0``, ``tls-port``)."""

    def __init__(self, executable: str, directory: str, port: int, tls: bool = False) -> None:
        self.executable = executable
        self.dir = directory
        self.port = port
        self.tls = tls
        self.conf = os.path.join(directory, "sentinel.conf")
        self._state: dict[str, Any] = {"dir": directory}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)

    @property
    def proc(self) -> "subprocess.Popen[bytes] | None":
        return self._state.get("proc")

    def start(self, lines: list[str]) -> None:
        ports = ["port 0", f"tls-port {self.port}"] if self.tls else [f"port {self.port}"]
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("\n".join([*ports, "bind 127.0.0.1", f"dir {self.dir}",
                               "daemonize no", "loglevel warning",
                               f"logfile {os.path.join(self.dir, 'sentinel.log')}",
                               *lines]) + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
        with open(os.path.join(self.dir, "stderr.log"), "wb") as err:
            self._state["proc"] = subprocess.Popen(
                [self.executable, self.conf, "--sentinel"], stdout=subprocess.DEVNULL,
                stderr=err, env=env)

    def command(self, *args: Any, password: str | None = None, timeout: float = 5.0) -> Any:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw:
            s = raw
            if self.tls:
                # Our own sentinel, whatever its certificate (a test may serve one from
                # another CA): not verified.
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                s = context.wrap_socket(raw, server_hostname="127.0.0.1")
            with s:
                f = s.makefile("rb")
                if password:
                    s.sendall(_encode("AUTH", password))
                    _read_reply(f)
                s.sendall(_encode(*args))
                return _read_reply(f)

    def stop(self) -> None:
        proc = self._state.pop("proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        self._finalizer()


class SentinelGroup:
    """A primary, a replica and ``n`` sentinels on loopback ports (module docstring).

    ``password``: the data servers' ``requirepass`` (the sentinels and the replica are
    told it); ``sentinel_password``: the sentinels' own ``requirepass`` (Redis 6.2+,
    also ``sentinel sentinel-pass`` between them).

    ``tls=True``: everything speaks TLS only: the primary and the replica
    (``tls-replication yes``) and the sentinels (``port 0``, ``tls-port``,
    ``tls-replication yes``: TLS to the data servers and to each other), with files from
    ``make_tls_files`` (``tls``; each presents the client certificate when it connects).
    ``tls_kwargs`` is then what a ``RedisCache`` needs (``ssl``, ``ssl_ca_certs``,
    ``sentinel_ssl``). ``sentinel_tls_files``: the sentinels serve that certificate
    instead (e.g. one from another CA), trusting both CAs themselves."""

    def __init__(self, service_name: str = "mymaster", n: int = 3, quorum: int = 2,
                 password: str | None = None, sentinel_password: str | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
                 executable: str | None = None, tls: bool = False,
                 sentinel_tls_files: TLSFiles | None = None) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(
                "redis-server not found: install it (Debian: apt-get install redis-server)")
        self.executable = found
        self.service_name = service_name
        self.quorum = quorum
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: list[RedisServer] = []
        self._sentinels: list[_Sentinel] = []
        self._n = n
        if sentinel_tls_files is not None and not tls:
            raise ValueError("sentinel_tls_files needs tls=True")
        self.sentinel_tls_files = sentinel_tls_files
        self.tls: TLSFiles | None = None
        self._dir = tempfile.mkdtemp(prefix="bruno-sentinels-")
        self._state: dict[str, Any] = {"dir": self._dir}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)
        if tls:
            self.tls = make_tls_files(os.path.join(self._dir, "tls"))

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """What a ``RedisCache(sentinels=..., service_name=...)`` needs besides: TLS to
        the data servers and to the sentinels (``{}`` without TLS)."""
        if self.tls is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": self.tls.ca_file, "sentinel_ssl": True}

    def _server_tls_args(self) -> tuple[str, ...]:
        if self.tls is None:
            return ()
        return ("--tls-replication", "yes", "--tls-client-cert-file", self.tls.client_cert_file,
                "--tls-client-key-file", self.tls.client_key_file)

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels, as ``RedisCache(sentinels=...)`` takes them."""
        return [("127.0.0.1", s.port) for s in self._sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]127.0.0.1:p1,127.0.0.1:p2,.../<service>/0``
        (with ``?sentinel_password=...`` when the sentinels need one)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self._sentinels)
        options = []
        if self.sentinel_password:
            options.append("sentinel_password="
                           + urllib.parse.quote(self.sentinel_password, safe=""))
        scheme = "redis+sentinel"
        if self.tls is not None:
            scheme = "rediss+sentinel"
            options += ["sentinel_ssl=true",
                        "ssl_ca_certs=" + urllib.parse.quote(self.tls.ca_file, safe="/")]
        query = "?" + "&".join(options) if options else ""
        return f"{scheme}://{auth}{hosts}/{self.service_name}/0{query}"

    def start(self, timeout: float = 60.0) -> "SentinelGroup":
        deadline = time.monotonic() + timeout
        tls = self.tls is not None
        primary = RedisServer(password=self.password, executable=self.executable,
                              extra_args=self._server_tls_args(), tls=tls,
                              tls_files=self.tls)
        self.servers.append(primary)
        primary.start()
        extra: tuple[str, ...] = ("--replicaof", "127.0.0.1", str(primary.port))
        if self.password:
            extra += ("--masterauth", self.password)
        replica = RedisServer(password=self.password, executable=self.executable,
                              extra_args=extra + self._server_tls_args(), tls=tls,
                              tls_files=self.tls)
        self.servers.append(replica)
        replica.start()
        self._wait(lambda: b"master_link_status:up" in replica.command("INFO", "replication"),
                   deadline, "the replica to sync")
        for _ in range(self._n):
            directory = tempfile.mkdtemp(prefix="bruno-sentinel-")
            self._sentinels.append(_Sentinel(self.executable, directory, free_port(),
                                             tls=self.tls is not None))
        lines = [f"sentinel monitor {self.service_name} 127.0.0.1 {primary.port} {self.quorum}",
                 f"sentinel down-after-milliseconds {self.service_name} {self.down_after_ms}",
                 f"sentinel failover-timeout {self.service_name} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {self.service_name} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {self.service_name} {_conf_quote(self.password)}")
        if self.sentinel_password:
            lines += [f"requirepass {_conf_quote(self.sentinel_password)}",
                      f"sentinel sentinel-pass {_conf_quote(self.sentinel_password)}"]
        if self.tls is not None:
            served = self.sentinel_tls_files or self.tls
            ca_file = self.tls.ca_file
            if served.ca_file != self.tls.ca_file:  # trust both: the servers and each other
                ca_file = os.path.join(self._dir, "sentinel-cas.crt")
                with open(ca_file, "w", encoding="ascii") as out:
                    for name in (self.tls.ca_file, served.ca_file):
                        with open(name, encoding="ascii") as f:
                            out.write(f.read())
            lines += ["tls-replication yes", "tls-auth-clients optional",
                      f"tls-cert-file {served.cert_file}", f"tls-key-file {served.key_file}",
                      f"tls-client-cert-file {self.tls.client_cert_file}",
                      f"tls-client-key-file {self.tls.client_key_file}",
                      f"tls-ca-cert-file {ca_file}"]
        for s in self._sentinels:
            s.start(lines)

        def ready() -> bool:
            for s in self._sentinels:
                info = self._master_info(s)
                if (int(info.get("num-slaves", 0)) < 1
                        or int(info.get("num-other-sentinels", 0)) < self._n - 1):
                    return False
            return True

        self._wait(ready, deadline, "the sentinels to know the replica and each other")
        return self

    def _master_info(self, s: _Sentinel) -> dict[str, str]:
        try:
            flat = s.command("SENTINEL", "MASTER", self.service_name,
                             password=self.sentinel_password)
        except (OSError, RuntimeError, ConnectionError):
            return {}
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat) - 1, 2)}

    def _wait(self, predicate: Any, deadline: float, what: str) -> None:
        while True:
            try:
                if predicate():
                    return
            except (OSError, RuntimeError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"SentinelGroup: gave up waiting for {what}")
            time.sleep(0.05)

    def sentinel_command(self, i: int, *args: Any) -> Any:
        """A command to sentinel i (authenticating if needed)."""
        return self._sentinels[i].command(*args, password=self.sentinel_password)

    def primary_address(self) -> tuple[str, int]:
        """What the first sentinel that answers names as the primary."""
        for i in range(len(self._sentinels)):
            try:
                host, port = self.sentinel_command(
                    i, "SENTINEL", "get-master-addr-by-name", self.service_name)
                return host.decode(), int(port)
            except (OSError, RuntimeError, ConnectionError, TypeError, ValueError):
                continue
        raise ConnectionError("no sentinel answered")

    def primary(self) -> RedisServer:
        """The server the sentinels name as the primary now."""
        port = self.primary_address()[1]
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisServer:
        """A server the sentinels do not name as the primary."""
        port = self.primary_address()[1]
        return next(s for s in self.servers if s.port != port)

    def failover(self, timeout: float = 60.0) -> None:
        """SENTINEL FAILOVER: the sentinels promote the replica without waiting for the
        primary to be down. Asked again while a sentinel says it cannot yet (a failover
        still in progress, the replica not synced again after an earlier one)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sentinel_command(0, "SENTINEL", "FAILOVER", self.service_name)
                return
            except RuntimeError as e:
                if not str(e).startswith(("INPROG", "NOGOODSLAVE")) or \
                        time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def wait_primary_changed(self, old_port: int, timeout: float = 60.0) -> RedisServer:
        """Wait until the sentinels name another primary and it says it is one (ROLE)."""
        deadline = time.monotonic() + timeout

        def changed() -> bool:
            port = self.primary_address()[1]
            if port == old_port:
                return False
            server = next(s for s in self.servers if s.port == port)
            return bool(server.command("ROLE")[0] == b"master")

        self._wait(changed, deadline, "the sentinels to name a new primary")
        return self.primary()

    def stop_sentinels(self) -> None:
        """Stop every sentinel (the data servers keep running)."""
        for s in self._sentinels:
            s.stop()

    def close(self) -> None:
        """Stop every process and remove their directories (idempotent)."""
        for s in self._sentinels:
            s.close()
        for server in self.servers:
            server.close()
        self._finalizer()

    def __enter__(self) -> "SentinelGroup":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()


CLUSTER_SLOTS = 16384


class _ClusterNode(RedisServer):
    """A RedisServer with cluster mode on: its nodes.conf in its own directory, the
    cluster bus on a port of its own (``cluster-port``, Redis 7+; before, the bus is
    ``port + 10000``, so the port is chosen where that is free too)."""

    _cluster_enabled = True

    def __init__(self, node_timeout_ms: int, cluster_args: tuple[str, ...],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_timeout_ms = node_timeout_ms
        self.cluster_args = cluster_args
        self._has_cluster_port = _server_major(self.executable) >= 7
        self.bus_port = self._pick_ports()

    def _pick_ports(self) -> int:
        if self._has_cluster_port:
            return free_port()
        for _ in range(100):  # Redis 6: the bus is port + 10000
            if self.port + 10000 <= 65535:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    try:
                        s.bind(("127.0.0.1", self.port + 10000))
                        return self.port + 10000
                    except OSError:
                        pass
            self.port = self._free_port()
        raise RuntimeError("no free port pair for a cluster node")

    def _args(self) -> list[str]:
        args = super()._args()
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(self.node_timeout_ms),
                 # a replica whose primary has been gone a while may still fail over
                 "--cluster-replica-validity-factor", "0",
                 # a replica's first sync at once (the default waits 5 s for others)
                 "--repl-diskless-sync-delay", "0",
                 # CLUSTER SLOTS lists a replica once its offset is not 0, which the
                 # primary's PINGs (every 10 s by default) first make it
                 "--repl-ping-replica-period", "1",
                 *self.cluster_args]
        if self.password:
            args += ["--masterauth", self.password]  # (secret: in the config file below)
        if self._has_cluster_port:
            args += ["--cluster-port", str(self.bus_port)]
        return args

    def _config_file(self) -> str:
        path = super()._config_file()
        if self.password:
            with open(path, "a", encoding="ascii") as f:
                f.write(f"masterauth {_conf_quote(self.password)}\n")
        return path

    def start(self, timeout: float = 10.0) -> "RedisServer":
        for _ in range(5):
            try:
                started = self._start_once(timeout)
                # From now on the node's address is in the others' nodes.conf: a
                # restart must come back on the same ports.
                self._port_chosen = False
                return started
            except _PortTaken:
                if not self._port_chosen:
                    raise RuntimeError(f"port {self.port} (or bus port {self.bus_port}) "
                                       "is in use") from None
                self.port = self._free_port()
                self.bus_port = self._pick_ports()
        raise RuntimeError("no free port for redis-server")


def _info(text: Any) -> dict[str, str]:
    """``CLUSTER INFO`` / ``INFO`` text as a dict."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for line in str(text).splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


class RedisCluster:
    """A Redis Cluster on loopback ports: ``primaries`` primaries with
    ``replicas_per_primary`` replicas each (default 3 + 3), every node a
    ``RedisServer`` in a private directory of its own (``cluster-enabled yes``,
    ``cluster-node-timeout`` ``node_timeout_ms``, no persistence), made a cluster by
    ``redis-cli --cluster create ... --cluster-replicas N --cluster-yes``::

        with RedisCluster() as cluster:
            cache = RedisCache(startup_nodes=cluster.startup_nodes)

    ``start()`` returns once every node says ``cluster_state:ok``, knows every other
    node, sees all 16384 slots served, and every node's ``CLUSTER SLOTS`` agrees, and
    every replica is in sync with its primary (``start_seconds`` says how long it took).
    ``nodes`` is every node (``RedisServer``s, in start order), ``primaries`` /
    ``replicas`` what each live node says it is now (``ROLE``), ``startup_nodes`` the
    ``[(host, port), ...]`` a client takes, ``url`` the
    ``redis://h1:p1,h2:p2,.../0?cluster=true`` form (``rediss://`` with TLS).
    ``kill(node)`` (SIGKILL) / ``restart(node)`` (same ports, same nodes.conf: it
    rejoins), ``wait_ok()`` waits for the cluster to be whole again (after a failover),
    ``slots()`` / ``node_for_slot()`` / ``keyslot()`` ask the cluster;
    ``migrate_slot(slot, target)`` begins moving a slot (``-ASK`` for keys moved until
    its ``finish()``), ``move_slots(slots, target)`` reshards.
    ``close()`` (or the end of a ``with`` block, the collector, interpreter exit) stops
    every process and removes every directory, also after a failed start; idempotent.

    ``tls=True``: every node serves TLS only, the cluster bus and replication too
    (``tls-cluster yes``, ``tls-replication yes``), with files from
    ``make_tls_files`` (``tls_files=`` to share a suite's); ``tls_kwargs`` is what a
    ``RedisCache`` needs then.
    """

    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1,
                 node_timeout_ms: int = 1000, password: str | None = None,
                 executable: str | None = None, tls: bool = False,
                 tls_files: TLSFiles | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(
                "redis-server not found: install it (Debian: apt-get install redis-server)")
        cli = shutil.which("redis-cli", path=os.path.dirname(found)) or shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError(
                "redis-cli not found: install it (Debian: apt-get install redis-tools)")
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        self.executable = found
        self.cli = cli
        self.n_primaries = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.extra_args = tuple(extra_args)
        self.nodes: list[RedisServer] = []
        #: Seconds the last start() took (processes, create, waiting for ok).
        self.start_seconds: float | None = None
        self._dir = tempfile.mkdtemp(prefix="bruno-cluster-")
        self._state: dict[str, Any] = {"dir": self._dir}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)
        self.tls: TLSFiles | None = None
        if tls:
            try:
                self.tls = tls_files or make_tls_files(os.path.join(self._dir, "tls"))
            except BaseException:
                self._finalizer()
                raise

    # -- addresses ----------------------------------------------------------------
    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Every node's address, as ``RedisCache(startup_nodes=...)`` takes them."""
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:p1,127.0.0.1:p2,.../0?cluster=true``
        (``rediss://...&ssl_ca_certs=...`` with TLS)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.startup_nodes)
        if self.tls is not None:
            ca = urllib.parse.quote(self.tls.ca_file, safe="/")
            return f"rediss://{auth}{hosts}/0?cluster=true&ssl_ca_certs={ca}"
        return f"redis://{auth}{hosts}/0?cluster=true"

    @property
    def tls_kwargs(self) -> dict[str, Any]:
        """What a RedisCache needs besides the addresses: ``{}`` without TLS."""
        if self.tls is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": self.tls.ca_file}

    # -- lifecycle ------------------------------------------------------------------
    def _cli_args(self) -> list[str]:
        args = [self.cli]
        if self.tls is not None:
            args += ["--tls", "--cacert", self.tls.ca_file,
                     "--cert", self.tls.client_cert_file, "--key", self.tls.client_key_file]
        return args

    def start(self, timeout: float = 60.0) -> "RedisCluster":
        """Start the nodes, create the cluster, wait until it is whole; returns self."""
        began = time.monotonic()
        deadline = began + timeout
        tls_args: tuple[str, ...] = ()
        if self.tls is not None:
            tls_args = ("--tls-cluster", "yes", "--tls-replication", "yes",
                        "--tls-client-cert-file", self.tls.client_cert_file,
                        "--tls-client-key-file", self.tls.client_key_file)
        total = self.n_primaries * (1 + self.replicas_per_primary)
        while len(self.nodes) < total:
            node = _ClusterNode(self.node_timeout_ms, tls_args + self.extra_args,
                                password=self.password, executable=self.executable,
                                tls=self.tls is not None, tls_files=self.tls)
            self.nodes.append(node)  # (close() stops it whatever happens next)
            node.start()
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # (not on a command line)
        created = subprocess.run(
            [*self._cli_args(), "--cluster", "create",
             *(f"{h}:{p}" for h, p in self.startup_nodes),
             "--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"],
            capture_output=True, text=True, env=env,
            timeout=max(1.0, deadline - time.monotonic()))
        if created.returncode != 0 or "[OK] All 16384 slots covered" not in created.stdout:
            raise RuntimeError("redis-cli --cluster create failed: "
                               + (created.stdout + created.stderr).strip()[-2000:])
        self.wait_ok(max(0.0, deadline - time.monotonic()))
        self.start_seconds = time.monotonic() - began
        return self

    def _live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok``, knows every node, sees
        all 16384 slots served, all agree on ``CLUSTER SLOTS``, and every live replica
        is in sync with its primary."""
        deadline = time.monotonic() + timeout
        why: str | None = "nothing yet"
        while True:
            try:
                why = self._not_ok()
                if why is None:
                    return
            except (OSError, RuntimeError, ConnectionError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"RedisCluster: not whole after {timeout:.1f} s ({why})")
            time.sleep(0.02)

    def _not_ok(self) -> str | None:
        """None when the cluster is whole, else what is missing."""
        live = self._live()
        if not live:
            return "no node is running"
        maps = set()
        live_replicas = 0
        for node in live:
            info = _info(node.command("CLUSTER", "INFO", timeout=2))
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state:{info.get('cluster_state')}"
            if int(info.get("cluster_slots_ok", 0)) != CLUSTER_SLOTS:
                return f"node {node.port}: cluster_slots_ok:{info.get('cluster_slots_ok')}"
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return f"node {node.port}: cluster_known_nodes:{info.get('cluster_known_nodes')}"
            maps.add(tuple(self._ranges(node)))
            role = node.command("ROLE", timeout=2)
            if role[0] == b"slave":
                if role[3] != b"connected":
                    return f"replica {node.port}: link to its primary {role[3]!r}"
                live_replicas += 1
        if len(maps) != 1:
            return "the nodes do not agree on CLUSTER SLOTS yet"
        ranges = maps.pop()
        # every live replica listed (once synced; a failed one is not)
        listed = {primary: replicas for _, _, primary, replicas in ranges}
        if sum(len(r) for r in listed.values()) != live_replicas:
            return f"CLUSTER SLOTS lists {listed}, {live_replicas} live replicas"
        covered = sum(end - start + 1 for start, end, _, _ in ranges)
        if covered != CLUSTER_SLOTS:
            return f"CLUSTER SLOTS covers {covered} slots"
        return None

    def _ranges(self, node: RedisServer) -> list[tuple[int, int, int, tuple[int, ...]]]:
        """node's CLUSTER SLOTS as sorted (start, end, primary port, replica ports)."""
        out = []
        for entry in node.command("CLUSTER", "SLOTS", timeout=2):
            start, end, primary, *replicas = entry
            out.append((int(start), int(end), int(primary[1]),
                        tuple(sorted(int(r[1]) for r in replicas))))
        return sorted(out)

    def slots(self) -> list[tuple[int, int, int, tuple[int, ...]]]:
        """``CLUSTER SLOTS`` of the first live node: sorted (start, end, primary port,
        replica ports)."""
        return self._ranges(self._any())

    def node_for_slot(self, slot: int) -> RedisServer:
        """The node serving slot (as the first live node sees it)."""
        for start, end, port, _ in self.slots():
            if start <= slot <= end:
                return self.node(port)
        raise LookupError(f"slot {slot} is not served")

    def keyslot(self, key: str | bytes) -> int:
        """``CLUSTER KEYSLOT key``, asked of a live node."""
        return int(self._any().command("CLUSTER", "KEYSLOT", key))

    def node(self, port: int) -> RedisServer:
        """The node listening on port."""
        return next(n for n in self.nodes if n.port == port)

    def _any(self) -> RedisServer:
        live = self._live()
        if not live:
            raise RuntimeError("no node of the cluster is running")
        return live[0]

    def command(self, *args: Any, timeout: float = 10.0) -> Any:
        """Run one command on the first live node."""
        return self._any().command(*args, timeout=timeout)

    # -- resharding -----------------------------------------------------------------
    def node_id(self, node: RedisServer) -> str:
        """A node's cluster id (``CLUSTER MYID``)."""
        return str(node.command("CLUSTER", "MYID").decode())

    def migrate_slot(self, slot: int, target: RedisServer) -> "SlotMigration":
        """Begin moving ``slot`` from the primary serving it to the primary ``target``
        (``CLUSTER SETSLOT ... IMPORTING`` on the target, ``MIGRATING`` on the source):
        until ``finish()``, keys already moved are answered by the source with
        ``-ASK``; ``move_keys(n)`` moves some (``MIGRATE``), ``finish()`` the rest and
        gives the slot to the target (every primary is told: the source then answers
        ``-MOVED``)."""
        source = self.node_for_slot(slot)
        if source is target:
            raise ValueError(f"slot {slot} is already served by {target.port}")
        migration = SlotMigration(self, slot, source, target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return migration

    def move_slots(self, slots: "range | list[int]", target: RedisServer) -> None:
        """Move each slot (its keys, then its ownership) to the primary ``target``,
        one after the other (resharding, as ``redis-cli --cluster reshard`` does)."""
        for slot in slots:
            if self.node_for_slot(slot) is not target:
                self.migrate_slot(slot, target).finish()

    def _roles(self) -> list[tuple[RedisServer, str]]:
        out = []
        for node in self._live():
            try:
                out.append((node, node.command("ROLE", timeout=2)[0].decode()))
            except (OSError, RuntimeError, ConnectionError):
                pass
        return out

    @property
    def primaries(self) -> list[RedisServer]:
        """The live nodes that say they are primaries (``ROLE``) now."""
        return [node for node, role in self._roles() if role == "master"]

    @property
    def replicas(self) -> list[RedisServer]:
        """The live nodes that say they are replicas (``ROLE``) now."""
        return [node for node, role in self._roles() if role == "slave"]

    def _node(self, node: "RedisServer | int") -> RedisServer:
        return self.nodes[node] if isinstance(node, int) else node

    def kill(self, node: "RedisServer | int") -> RedisServer:
        """SIGKILL a node (a ``RedisServer`` of ``nodes``, or its index), as a crash
        would; its replica takes over after about ``node_timeout_ms`` (``wait_ok()``
        waits for that). Returns the node."""
        target = self._node(node)
        target.kill()
        return target

    def restart(self, node: "RedisServer | int") -> RedisServer:
        """Start a killed or stopped node again on its ports, with its nodes.conf: it
        rejoins the cluster (a primary that was failed over comes back as a replica)."""
        target = self._node(node)
        target.restart()
        return target

    def close(self) -> None:
        """Stop every node and remove every directory (idempotent)."""
        for node in self.nodes:
            node.close()
        self._finalizer()

    def __enter__(self) -> "RedisCluster":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SlotMigration:
    """A slot being moved between two primaries (``RedisCluster.migrate_slot``)."""

    def __init__(self, cluster: RedisCluster, slot: int, source: RedisServer,
                 target: RedisServer) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target
        self.finished = False

    def move_keys(self, count: int | None = None) -> int:
        """Move up to ``count`` keys of the slot (all with None) to the target
        (``MIGRATE``, 100 at a time); returns how many moved."""
        moved = 0
        while count is None or moved < count:
            batch = 100 if count is None else min(100, count - moved)
            keys = self.source.command("CLUSTER", "GETKEYSINSLOT", self.slot, batch)
            if not keys:
                break
            auth: list[Any] = []
            if self.cluster.password:
                auth = ["AUTH", self.cluster.password]
            reply = self.source.command("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000,
                                        *auth, "KEYS", *keys)
            if reply not in ("OK", "NOKEY"):
                raise RuntimeError(f"MIGRATE answered {reply!r}")
            moved += len(keys)
        return moved

    def finish(self) -> None:
        """Move the keys left, then give the slot to the target: the target first,
        then the source, then every other primary (``CLUSTER SETSLOT slot NODE``)."""
        if self.finished:
            return
        self.move_keys()
        target_id = self.cluster.node_id(self.target)
        others = [n for n in self.cluster.primaries if n not in (self.target, self.source)]
        for node in (self.target, self.source, *others):
            node.command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
        self.finished = True


try:  # a pytest fixture, when pytest is there
    import pytest

    @pytest.fixture
    def redis_server() -> Iterator[RedisServer]:
        """A fresh redis-server for one test, stopped and removed afterwards."""
        with RedisServer() as server:
            yield server

    @pytest.fixture
    def redis_cluster() -> Iterator[RedisCluster]:
        """A fresh Redis Cluster (3 primaries, 3 replicas) for one test, stopped and
        removed afterwards."""
        with RedisCluster() as cluster:
            yield cluster
except ImportError:  # pragma: no cover
    pass
