"""RedisCache over TLS, what only TLS has (README "RedisCache API", TLS; SPEC "Production
connectivity"): the ssl* options and their bad values, certificates that do not verify
or do not name the host, mutual TLS, the wrong protocol on either side, the server's
close_notify, big values and pipelining across TLS records, rediss:// URLs, and no secret
in any message, log record or repr.

Everything the plaintext transport promises is checked over TLS by the contract, fault
and concurrency suites themselves (test_redis.py, test_redis_faults.py,
test_redis_concurrency.py, multilevel/: ``TRANSPORTS``, conftest.py). Here every server
is a real redis-server on loopback, every certificate made at test time by
``make_tls_files`` (the ``tls_files`` fixture: a CA, a server certificate for localhost
and 127.0.0.1, a client certificate; the module's other files below)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import urllib.parse

import pytest

from bruno_memory_c import CacheError, RedisCache
from bruno_memory_c.testing import RedisServer, _openssl, make_tls_files
from tests.support import bounded_by, fork, script_command, until, HANG, LOGGER, REPO

PREFIX = "tls:"
bounded = bounded_by(HANG)       # hang detection only: nothing here asserts on time
CONNECT_TIMEOUT = 2.0            # the caches' connect_timeout (failures come well before)
KEY_PASSWORD = "k3y-pa55-Zq9"    # of the encrypted client key
REDIS_PASSWORD = "r3dis-pa55-Wx7"
OPENSSLDIR = "/usr/lib/ssl"      # the Debian libcrypto's (a wheel bundles that one)
DEBIAN_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # the first fallback bundle


# ---------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """Files of another CA (a server certificate for localhost/127.0.0.1 it signed,
    which our CA does not vouch for)."""
    return make_tls_files(str(tmp_path_factory.mktemp("other-ca")))


@pytest.fixture(scope="module")
def example_com(tmp_path_factory, tls_files):
    """A server certificate for example.com only, signed by our CA."""
    return make_tls_files(str(tmp_path_factory.mktemp("example")), names=("example.com",),
                          ca=tls_files)


@pytest.fixture(scope="module")
def expired(tmp_path_factory, tls_files):
    """A server certificate for localhost/127.0.0.1 signed by our CA, expired yesterday
    (and the valid client certificate of tls_files)."""
    files = make_tls_files(str(tmp_path_factory.mktemp("expired")), ca=tls_files, days=-1)
    return files._replace(client_cert_file=tls_files.client_cert_file,
                          client_key_file=tls_files.client_key_file)


@pytest.fixture(scope="module")
def encrypted_key(tmp_path_factory, tls_files) -> str:
    """The client key of tls_files, encrypted (AES-256, PKCS#8) with KEY_PASSWORD."""
    d = str(tmp_path_factory.mktemp("enc"))
    path = os.path.join(d, "client-enc.key")
    _openssl("pkcs8", "-topk8", "-in", tls_files.client_key_file, "-out", path,
             "-v2", "aes-256-cbc", "-passout", f"pass:{KEY_PASSWORD}", cwd=d)
    return path


def serve(files, **kw) -> RedisServer:
    """A TLS-only redis-server with the server certificate and key of `files` (and our
    CA for client certificates), started."""
    return RedisServer(tls=True, tls_files=files, **kw).start()


def cache_for(server, host: str = "127.0.0.1", **kw) -> RedisCache:
    kw.setdefault("prefix", PREFIX)
    kw.setdefault("connect_timeout", CONNECT_TIMEOUT)
    kw.setdefault("socket_timeout", 10.0)
    return RedisCache(host=host, port=server.port, **kw)


@pytest.fixture
def tls_server(tls_files):
    with RedisServer(tls=True, tls_files=tls_files) as server:
        yield server


async def connect_fails(cache: RedisCache) -> str:
    """connect() fails with CacheError (hang detection only); its message."""
    with pytest.raises(CacheError) as info:
        await bounded(cache.connect())
    msg = str(info.value)
    assert msg.startswith("Redis connection failed: "), msg
    assert not cache.connected
    return msg


async def round_trip(cache: RedisCache, value=None) -> None:
    value = value if value is not None else ["over", "tls", 1]
    await bounded(cache.set("k", value))
    assert await bounded(cache.get("k")) == value


# ---------------------------------------------------------------------- the options


def test_ssl_attribute_and_repr(tls_files):
    plain = RedisCache(host="127.0.0.1", port=1)
    assert plain.ssl is False and "tls:" not in repr(plain)
    c = RedisCache(host="127.0.0.1", port=1, ssl=True, ssl_ca_certs=tls_files.ca_file)
    assert c.ssl is True
    assert "tls:127.0.0.1:1" in repr(c)
    with pytest.raises(AttributeError):
        c.ssl = False


@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_missing_file_is_a_value_error_naming_it(tls_files, tmp_path, option):
    missing = str(tmp_path / f"no-such-{option}.pem")
    kw = {"ssl": True, "ssl_ca_certs": tls_files.ca_file,
          "ssl_certfile": tls_files.client_cert_file, "ssl_keyfile": tls_files.client_key_file,
          option: missing}
    with pytest.raises(ValueError) as info:
        RedisCache(host="127.0.0.1", port=1, **kw)
    assert option in str(info.value) and missing in str(info.value), str(info.value)


def test_missing_ca_path_is_a_value_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(ValueError, match="ssl_ca_path") as info:
        RedisCache(ssl=True, ssl_ca_path=missing)
    assert missing in str(info.value)


@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_unusable_file_is_a_value_error_naming_it(tls_files, tmp_path, option):
    """A directory where a file belongs, and a file that holds no PEM (the process may
    run as root, which reads any file: these are the unreadable files it can test)."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for bad in (str(tmp_path), str(garbage)):
        kw = {"ssl": True, "ssl_ca_certs": tls_files.ca_file,
              "ssl_certfile": tls_files.client_cert_file,
              "ssl_keyfile": tls_files.client_key_file, option: bad}
        with pytest.raises(ValueError) as info:
            RedisCache(host="127.0.0.1", port=1, **kw)
        assert option in str(info.value) and bad in str(info.value), str(info.value)


def test_unreadable_file_is_a_value_error_naming_it(tls_files, tmp_path):
    """A file of mode 000. Root reads any file, so as root the attempt runs in a forked
    child that has given up root (user and group nobody) first."""
    copy = tmp_path / "ca.crt"
    shutil.copy(tls_files.ca_file, copy)
    copy.chmod(0)

    def attempt() -> str:
        try:
            RedisCache(ssl=True, ssl_ca_certs=str(copy))
        except ValueError as e:
            return str(e)
        return "no ValueError"

    if os.geteuid() != 0:
        message = attempt()
    else:
        r, w = os.pipe()
        pid = fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                os.write(w, attempt().encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            message = f.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
    assert "ssl_ca_certs" in message and str(copy) in message, message


def test_options_are_checked_without_ssl_too(tmp_path):
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        RedisCache(ssl_cert_reqs="sometimes")
    with pytest.raises(TypeError, match="ssl_ca_certs"):
        RedisCache(ssl_ca_certs=42)


@pytest.mark.parametrize("value", ["sometimes", "", "CERT_REQUIRED ", 3, -1, 2.0, True, b"none"])
def test_bad_cert_reqs(tls_files, value):
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file, ssl_cert_reqs=value)


@pytest.mark.parametrize("value", ["none", "optional", "required", "REQUIRED", 0, 1, 2])
def test_good_cert_reqs(tls_files, value):
    RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file, ssl_cert_reqs=value)


@pytest.mark.parametrize("value", ["TLSv1.4", "SSLv3", "1.2", "", 0x300, 0x305, 771.0, True])
def test_bad_min_version(tls_files, value):
    with pytest.raises(ValueError, match="ssl_min_version"):
        RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file, ssl_min_version=value)


def test_bad_ciphers(tls_files):
    with pytest.raises(ValueError, match="ssl_ciphers"):
        RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file, ssl_ciphers="NO-SUCH-CIPHER")


def test_keyfile_without_certfile(tls_files):
    with pytest.raises(ValueError, match="ssl_keyfile"):
        RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file,
                   ssl_keyfile=tls_files.client_key_file)


def test_key_of_another_certificate(tls_files, other_ca):
    with pytest.raises(ValueError, match="ssl_keyfile") as info:
        RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file,
                   ssl_certfile=tls_files.client_cert_file,
                   ssl_keyfile=other_ca.client_key_file)
    assert "match" in str(info.value), str(info.value)


def test_ssl_with_unix_socket(tls_files, tmp_path):
    sock = str(tmp_path / "redis.sock")
    with pytest.raises(ValueError, match="unix"):
        RedisCache(unix_socket_path=sock, ssl=True, ssl_ca_certs=tls_files.ca_file)
    with pytest.raises(ValueError):
        RedisCache.from_url(f"unix://{sock}?ssl_ca_certs={tls_files.ca_file}")
    RedisCache(unix_socket_path=sock, ssl=False)  # fine


@pytest.mark.parametrize("password", ["wrong-password", "", None])
def test_wrong_key_password(tls_files, encrypted_key, password):
    with pytest.raises(ValueError) as info:
        RedisCache(ssl=True, ssl_ca_certs=tls_files.ca_file,
                   ssl_certfile=tls_files.client_cert_file, ssl_keyfile=encrypted_key,
                   ssl_password=password)
    msg = str(info.value)
    assert "private key" in msg and encrypted_key in msg, msg
    assert "ssl_password" in msg, msg
    if password:
        assert password not in msg


# ---------------------------------------------------------------------- verification


async def test_default_verification_works(tls_server):
    """The defaults: verification on, the hostname checked, for an IP and a name."""
    for host in ("127.0.0.1", "localhost"):
        cache = cache_for(tls_server, host, ssl=True, ssl_ca_certs=tls_server.tls.ca_file)
        await round_trip(cache)
        assert cache.stats()["connected"] is True
        await bounded(cache.disconnect())


async def test_ca_path(tls_server, tmp_path):
    """ssl_ca_path: a directory of hashed CA certificates (openssl rehash)."""
    d = tmp_path / "cas"
    d.mkdir()
    shutil.copy(tls_server.tls.ca_file, d / "ca.pem")
    _openssl("rehash", str(d), cwd=str(d))
    cache = cache_for(tls_server, ssl=True, ssl_ca_path=str(d))
    await round_trip(cache)
    await bounded(cache.disconnect())


async def test_server_signed_by_another_ca(tls_files, other_ca):
    with serve(other_ca) as server:  # (its CA is other_ca's)
        cache = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file)
        for _ in range(2):  # and again, from the backoff state
            msg = await connect_fails(cache)
            assert "certificate verify failed" in msg, msg
        with pytest.raises(CacheError, match="certificate verify failed"):
            await bounded(cache.get("k"))
        # ssl_cert_reqs="none" accepts it (no verification at all)
        for reqs in ("none", 0):
            unverified = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file,
                                   ssl_cert_reqs=reqs)
            await round_trip(unverified)
            await bounded(unverified.disconnect())
        # and the right CA, of course
        right = cache_for(server, ssl=True, ssl_ca_certs=other_ca.ca_file)
        await round_trip(right)
        await bounded(right.disconnect())


async def test_expired_server_certificate(expired, tls_files):
    with serve(expired) as server:
        cache = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file)
        msg = await connect_fails(cache)
        assert "certificate verify failed" in msg and "expired" in msg, msg


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_hostname_mismatch(example_com, tls_files, host):
    with serve(example_com) as server:
        cache = cache_for(server, host, ssl=True, ssl_ca_certs=tls_files.ca_file)
        msg = await connect_fails(cache)
        assert "certificate verify failed" in msg and "mismatch" in msg, msg
        assert "hostname" in msg.lower() and host in msg, msg
        # ssl_check_hostname=False accepts it: the chain is still verified
        unchecked = cache_for(server, host, ssl=True, ssl_ca_certs=tls_files.ca_file,
                              ssl_check_hostname=False)
        await round_trip(unchecked)
        await bounded(unchecked.disconnect())


async def test_check_hostname_off_still_verifies_the_chain(other_ca, tls_files):
    with serve(other_ca) as server:
        cache = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file,
                          ssl_check_hostname=False)
        assert "certificate verify failed" in await connect_fails(cache)


# ------------------------------------------------------- the default CA certificates
# Without ssl_ca_certs / ssl_ca_path: OpenSSL's default locations, SSL_CERT_FILE and
# SSL_CERT_DIR when set, else the well-known bundles when libcrypto's own OPENSSLDIR
# holds none. Each case runs tests/scripts/tls_default_cas.py in a fresh interpreter
# (the environment is read when the RedisCache is made; this process's stays as it is).


def default_cas(server, env: dict | None = None, wrap: tuple[str, ...] = ()) -> str:
    """tls_default_cas.py against `server` with `env` added to an environment without
    SSL_CERT_FILE / SSL_CERT_DIR, its command prefixed by `wrap`: its output line."""
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    proc = subprocess.run([*wrap, *script_command("tls_default_cas", server.port)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**base, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_default_cas_do_not_vouch_for_a_private_ca(tls_server):
    """The system's CA certificates only: the test CA's server fails verification, and
    the message says which CA certificates were used and what to set."""
    out = default_cas(tls_server)
    assert out.startswith("error: Redis connection failed: SSL certificate verify failed: "), out
    assert "(CA certificates: " in out or "(no system CA certificates found" in out, out
    assert "ssl_ca_certs" in out and "SSL_CERT_FILE" in out, out


def test_ssl_cert_file_names_the_ca(tls_server):
    """SSL_CERT_FILE (OpenSSL's own variable) replaces the system's CA file: with the
    test CA there, verification with no ssl_ca_certs succeeds."""
    assert default_cas(tls_server, {"SSL_CERT_FILE": tls_server.tls.ca_file}) == "ok"


def test_ssl_cert_dir_names_the_ca(tls_server, tmp_path):
    """SSL_CERT_DIR, a directory of hashed certificates, likewise (with SSL_CERT_FILE
    naming a file of no CA, so the system's cannot be what verified it)."""
    d = tmp_path / "cas"
    d.mkdir()
    shutil.copy(tls_server.tls.ca_file, d / "ca.pem")
    _openssl("rehash", str(d), cwd=str(d))
    nothing = tmp_path / "none.pem"
    nothing.write_text("")
    env = {"SSL_CERT_DIR": str(d), "SSL_CERT_FILE": str(nothing)}
    assert default_cas(tls_server, env) == "ok"
    out = default_cas(tls_server, {"SSL_CERT_FILE": str(nothing)})
    assert f"(CA certificates: SSL_CERT_FILE={nothing}, " in out, out


def _private_mounts() -> bool:
    """Can `unshare -rm` give a command its own mounts (a user namespace) here?"""
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_fallback_bundle_when_openssldir_holds_none(tls_server, tmp_path):
    """A system without libcrypto's OPENSSLDIR (a wheel's Debian libcrypto on Fedora,
    Alpine, SUSE): the first well-known bundle is used. Played in a private mount
    namespace: an empty directory over OPENSSLDIR, the test CA over the Debian bundle.
    (Debian's layout and `unshare -rm` are what the test machine provides: required,
    not skipped.)"""
    assert os.path.isdir(OPENSSLDIR) and os.path.isfile(DEBIAN_BUNDLE), \
        f"needs Debian's layout ({OPENSSLDIR}, {DEBIAN_BUNDLE}): ca-certificates installed?"
    assert _private_mounts(), "needs `unshare -rm` (a user namespace for private mounts)"
    empty = tmp_path / "empty"
    empty.mkdir()
    mount = ('set -e; mount --bind "$0" "$1"; mount --bind "$2" "$3"; shift 3; exec "$@"',
             str(empty), OPENSSLDIR)
    ok = ("unshare", "-rm", "sh", "-c", *mount, tls_server.tls.ca_file, DEBIAN_BUNDLE)
    assert default_cas(tls_server, wrap=ok) == "ok"
    # and with no bundle either (an empty directory over /etc/ssl/certs too): says so
    none = ("unshare", "-rm", "sh", "-c", *mount, str(empty), os.path.dirname(DEBIAN_BUNDLE))
    out = default_cas(tls_server, wrap=none)
    assert out.startswith("error: Redis connection failed: SSL certificate verify failed: "), out
    assert out.endswith("(no system CA certificates found: set ssl_ca_certs or "
                        "SSL_CERT_FILE)"), out


# ---------------------------------------------------------------------- wrong protocol


async def test_plaintext_server_on_the_tls_port(tls_files):
    """ssl=True against a plaintext server: a CacheError within connect_timeout (the
    server answers the ClientHello with an error, or waits for the rest of a line that
    never comes), never a hang."""
    with RedisServer() as server:
        cache = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file,
                          connect_timeout=1.0)
        for _ in range(2):
            msg = await connect_fails(cache)  # (an SSL error, or the handshake's timeout)
            assert "SSL" in msg or "TLS" in msg, msg
        # and the server is fine (nothing the handshake sent was taken as a command)
        assert server.command("DBSIZE") == 0


async def test_tls_server_on_the_plaintext_port(tls_server):
    """A plaintext client against a TLS server: CacheError within connect_timeout."""
    cache = cache_for(tls_server, connect_timeout=1.0)
    for _ in range(2):
        msg = await connect_fails(cache)
        assert "TLS port" in msg, msg
    with pytest.raises(CacheError):
        await bounded(cache.set("k", 1))
    assert tls_server.command("DBSIZE") == 0


async def test_one_server_serving_both_ports(tls_files):
    """RedisServer(tls=True, plain_port_too=True) (the TLS benchmark's server): TLS on
    .port, plaintext on .plain_port, one keyspace."""
    with pytest.raises(ValueError):
        RedisServer(plain_port_too=True)
    with RedisServer(tls=True, tls_files=tls_files, plain_port_too=True) as server:
        assert server.plain_port not in (None, server.port)
        over_tls = cache_for(server, **server.tls_kwargs)
        plain = RedisCache(host="127.0.0.1", port=server.plain_port, prefix=PREFIX,
                           connect_timeout=CONNECT_TIMEOUT)
        try:
            await round_trip(over_tls, ["both"])
            assert await bounded(plain.get("k")) == ["both"]
        finally:
            await over_tls.disconnect()
            await plain.disconnect()


async def test_peer_that_never_answers_the_handshake(tls_files):
    """A listener that accepts (the kernel does) and never says a word: the TLS
    handshake times out, a CacheError at connect_timeout saying so, never a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        cache = RedisCache(host="127.0.0.1", port=listener.getsockname()[1], ssl=True,
                           ssl_ca_certs=tls_files.ca_file, connect_timeout=0.5)
        for _ in range(2):
            msg = await connect_fails(cache)
            assert "Timeout" in msg and "TLS" in msg, msg


async def test_min_version_above_the_server(tls_files):
    """A server of TLS 1.2 only and ssl_min_version TLS 1.3: no common version."""
    with serve(tls_files, extra_args=("--tls-protocols", "TLSv1.2")) as server:
        cache = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file,
                          ssl_min_version="TLSv1.3")
        msg = await connect_fails(cache)
        assert "SSL" in msg, msg
        ok = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file,
                       ssl_min_version="TLSv1.2", ssl_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        await round_trip(ok)
        await bounded(ok.disconnect())


# ---------------------------------------------------------------------- mutual TLS


async def test_mutual_tls(tls_files, encrypted_key):
    with serve(tls_files, tls_auth_clients="yes") as server:
        cache = cache_for(server, **server.tls_kwargs)  # with the client certificate
        assert "ssl_certfile" in server.tls_kwargs
        await round_trip(cache)
        await bounded(cache.disconnect())
        # the encrypted key, with its password (str or bytes)
        for password in (KEY_PASSWORD, KEY_PASSWORD.encode()):
            enc = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file,
                            ssl_certfile=tls_files.client_cert_file, ssl_keyfile=encrypted_key,
                            ssl_password=password)
            await round_trip(enc)
            await bounded(enc.disconnect())
        # without a client certificate: refused, clearly, and nothing written
        anonymous = cache_for(server, ssl=True, ssl_ca_certs=tls_files.ca_file)
        for _ in range(2):
            msg = await connect_fails(anonymous)
            assert "certificate" in msg, msg
        with pytest.raises(CacheError):
            await bounded(anonymous.set("other", 1))
        assert server.command("EXISTS", PREFIX + "other") == 0


# ---------------------------------------------------------------------- the connection


async def test_client_kill_then_the_next_request_reconnects(tls_server):
    """CLIENT KILL over TLS (the server's close_notify and FIN): the cache notices, and
    the next request reconnects and works; twice."""
    cache = cache_for(tls_server, **tls_server.tls_kwargs)
    await round_trip(cache)
    for n in (1, 2):
        assert tls_server.command("CLIENT", "KILL", "TYPE", "normal") >= 1
        await until(lambda: cache.stats()["connected"] is False, "the close noticed", HANG)
        await round_trip(cache, ["again", n])
        assert cache.stats()["reconnects"] >= n
    await bounded(cache.disconnect())


async def test_server_restart_over_tls(tls_server):
    cache = cache_for(tls_server, **tls_server.tls_kwargs)
    await round_trip(cache)
    tls_server.kill()
    with pytest.raises(CacheError):
        await bounded(cache.set("k", "while dead"))
    await asyncio.to_thread(tls_server.restart)
    for _ in range(int(HANG / 0.05)):
        try:
            await round_trip(cache, "back")
            break
        except CacheError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("never recovered")
    await bounded(cache.disconnect())


@pytest.mark.parametrize("size_mb", [1, 6])
async def test_big_values(tls_server, size_mb):
    """Values of several MB cross many TLS records (16 KB each) both ways."""
    cache = cache_for(tls_server, **tls_server.tls_kwargs)
    value = {"blob": "".join(chr(0x41 + i % 26) for i in range(size_mb * 1024 * 1024)),
             "uni": "é€𝄞" * 1000}
    await bounded(cache.set("big", value))
    assert await bounded(cache.get("big")) == value
    assert tls_server.command("STRLEN", PREFIX + "big") == len(json.dumps(value).encode())
    several = {f"b{i}": [i, "x" * (300_000 + i)] for i in range(8)}
    await bounded(cache.set_many(several))
    assert await bounded(cache.get_many(list(several))) == several
    await bounded(cache.disconnect())


async def test_100_concurrent_tasks_pipelined(tls_server):
    cache = cache_for(tls_server, **tls_server.tls_kwargs)
    await bounded(cache.connect())

    async def task(t: int):
        for i in range(20):
            value = [t, i, "v" * (t * 97 % 5000)]
            await cache.set(f"t{t}:{i}", value)
            assert await cache.get(f"t{t}:{i}") == value
        return t

    batches_before = cache.stats()["batches"]
    assert await bounded(asyncio.gather(*(task(t) for t in range(100)))) == list(range(100))
    s = cache.stats()
    assert s["errors"] == 0 and s["in_flight"] == 0, s
    # automatic pipelining: the 4,000 commands went out in fewer writes
    assert s["batches"] - batches_before < 4000, s
    got = await bounded(asyncio.gather(*(cache.get(f"t{t}:19") for t in range(100))))
    assert got == [[t, 19, "v" * (t * 97 % 5000)] for t in range(100)]
    await bounded(cache.disconnect())


# ---------------------------------------------------------------------- URLs


async def test_rediss_url(tls_files):
    with serve(tls_files, password=REDIS_PASSWORD) as server:
        q = urllib.parse.quote
        base = f"rediss://:{q(REDIS_PASSWORD, safe='')}@127.0.0.1:{server.port}/3"
        c = RedisCache.from_url(f"{base}?ssl_ca_certs={q(tls_files.ca_file)}"
                                "&ssl_cert_reqs=required&ssl_min_version=TLSv1.2",
                                prefix=PREFIX)
        assert c.ssl is True and c.db == 3
        await round_trip(c)
        await bounded(c.disconnect())
        c = RedisCache.from_url(f"{base}?ssl_cert_reqs=none&ssl_check_hostname=false",
                                prefix=PREFIX)
        await round_trip(c)
        await bounded(c.disconnect())
        # redis:// to the TLS port: plaintext, refused
        plain = RedisCache.from_url(base.replace("rediss://", "redis://"),
                                    connect_timeout=1.0)
        await connect_fails(plain)
        # ssl_* options need rediss://
        with pytest.raises(ValueError, match="rediss"):
            RedisCache.from_url(f"redis://127.0.0.1:1/0?ssl_ca_certs={q(tls_files.ca_file)}")
        with pytest.raises(ValueError, match="ssl_cert_reqs"):
            RedisCache.from_url("rediss://127.0.0.1:1/0?ssl_cert_reqs=sometimes")
        with pytest.raises(ValueError, match="ssl_ca_certs") as info:
            RedisCache.from_url("rediss://127.0.0.1:1/0?ssl_ca_certs=/no/such/ca.pem")
        assert "/no/such/ca.pem" in str(info.value)


async def test_rediss_url_mutual_tls(tls_files, encrypted_key):
    with serve(tls_files, tls_auth_clients="yes") as server:
        q = urllib.parse.quote
        url = (f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={q(tls_files.ca_file)}"
               f"&ssl_certfile={q(tls_files.client_cert_file)}&ssl_keyfile={q(encrypted_key)}"
               f"&ssl_password={q(KEY_PASSWORD, safe='')}")
        c = RedisCache.from_url(url, prefix=PREFIX)
        await round_trip(c)
        await bounded(c.disconnect())
        assert KEY_PASSWORD not in repr(c)


# ---------------------------------------------------------------------- no secrets


async def test_no_secret_in_messages_logs_or_repr(tls_files, other_ca, encrypted_key, caplog):
    """Passwords (the key's, Redis') and key material appear in no exception message,
    no log record and no repr, whatever fails."""
    secrets = [KEY_PASSWORD, REDIS_PASSWORD]
    for path in (tls_files.client_key_file, encrypted_key, tls_files.key_file):
        with open(path) as f:
            pem = f.read()
        secrets += [line for line in pem.splitlines() if line and not line.startswith("-----")]
    texts = []
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    def mutual(**kw):
        return {"ssl": True, "ssl_ca_certs": tls_files.ca_file,
                "ssl_certfile": tls_files.client_cert_file, "ssl_keyfile": encrypted_key,
                "ssl_password": KEY_PASSWORD, "password": REDIS_PASSWORD, **kw}

    # construction failures
    for kw in (mutual(ssl_password="nope-" + KEY_PASSWORD), mutual(ssl_ciphers="NOPE"),
               mutual(ssl_cert_reqs="nope"), mutual(ssl_min_version="nope"),
               mutual(ssl_keyfile=tls_files.ca_file), mutual(ssl_certfile="/no/such")):
        with pytest.raises((ValueError, TypeError)) as info:
            RedisCache(host="127.0.0.1", port=1, **kw)
        texts.append(str(info.value))
    # connection failures: the wrong CA, a refused client certificate, a wrong password
    with serve(other_ca, password=REDIS_PASSWORD, tls_auth_clients="yes") as server:
        for kw in (mutual(), mutual(ssl_cert_reqs="none", password="wrong")):
            c = cache_for(server, **kw)
            texts.append(repr(c))
            with pytest.raises(CacheError) as info:
                await bounded(c.connect())
            texts.append(str(info.value))
            with pytest.raises(CacheError) as info:  # (connecting: the failure is raised)
                await bounded(c.get("k"))
            texts.append(str(info.value))
    with serve(tls_files, password=REDIS_PASSWORD) as server:
        c = cache_for(server, **mutual())
        await round_trip(c)
        texts.append(repr(c))
        texts.append(str(c.stats()))
        server.kill()
        assert await bounded(c.get("k")) is None
        await bounded(c.disconnect())
    texts += [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    assert any("verify failed" in t for t in texts), texts
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text)


@pytest.mark.parametrize("option", ["ssl_cert_reqs", "ssl_min_version"])
def test_a_bad_value_whose_repr_cannot_be_encoded(option):
    """The ValueError leaves out a repr that is not UTF-8 encodable (it was formatted
    from NULL: a crash)."""
    class Odd:
        def __repr__(self):
            return "\udc80"

    with pytest.raises(ValueError, match=option):
        RedisCache(ssl=True, **{option: Odd()})
