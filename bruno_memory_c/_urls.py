"""``RedisCache.from_url``: a Redis URL as the constructor's keyword arguments.

``redis://[[user]:password@]host[:port][/db][?option=value&...]``, ``rediss://...``
(the same over TLS: ``ssl=True``) and ``unix://[[user]:password@]/path[?db=N&option=
value...]``, as redis-py spells them; user and password are percent-decoded. Query
options carry the constructor's keywords that have a text form (``db``,
``socket_timeout``, ``connect_timeout``, ``max_reply_bytes``, and the ``ssl_*``
options: ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_password``, ``ssl_cert_reqs``, ``ssl_check_hostname``, ``ssl_min_version``,
``ssl_ciphers``); an option this cache does not know is a ``ValueError`` naming it,
so that a misspelt setting never passes silently, and ``ssl_*`` options in a
``redis://`` URL are one too (they would be ignored: plaintext).

Sentinel: ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
[?option=value&...]`` (``rediss+sentinel://``, or ``ssl=true`` in the query, for TLS to the
data server). The hosts are the sentinels (port 26379 when omitted; ``[::1]:26379`` for
IPv6), the path's first part is ``service_name`` and the second the database; user and
password are the data server's. The query takes the options above and
``sentinel_username``, ``sentinel_password`` (the sentinels' own), ``service_name`` and
``sentinel_ssl`` (``true``: the sentinels are asked over TLS, with the ``ssl_*`` options,
which it therefore allows in a ``redis+sentinel://`` URL too).

Redis Cluster: ``redis://[[user]:password@]host[:port],host[:port].../0?cluster=true``
(and ``rediss://``): several hosts are the ``startup_nodes`` (port 6379 when omitted);
the query takes ``cluster`` (true/false; omitted: asked at connect) and
``read_from_replicas``, with one host too.
"""
from __future__ import annotations

from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["parse_url"]


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"url option {name} must be an integer, not {text!r}") from None


def _seconds(name: str, text: str) -> float | None:
    if text.lower() in ("", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"url option {name} must be a number of seconds, not {text!r}") from None


def _bool(name: str, text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on", "y"):
        return True
    if value in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(f"url option {name} must be true or false, not {text!r}")


def _text(name: str, text: str) -> str:
    return text


#: Query options and how their text becomes the keyword's value.
OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "db": _int,
    "socket_timeout": _seconds,
    "connect_timeout": _seconds,
    "max_reply_bytes": _int,
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_password": _text,
    "ssl_cert_reqs": _text,
    "ssl_check_hostname": _bool,
    "ssl_min_version": _text,
    "ssl_ciphers": _text,
}


#: Query options of the redis:// and rediss:// URLs only.
CLUSTER_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "cluster": _bool,
    "read_from_replicas": _bool,
}

#: Query options of the Sentinel URLs only.
SENTINEL_OPTIONS: dict[str, Callable[[str, str], Any]] = {
    "ssl": _bool,
    "service_name": _text,
    "sentinel_username": _text,
    "sentinel_password": _text,
    "sentinel_ssl": _bool,
}

SENTINEL_PORT = 26379


def _hosts(netloc: str, default_port: int, what: str) -> list[tuple[str, int]]:
    """``host[:port],host[:port]...`` (userinfo removed) as (host, port) pairs; `what`
    names the url in messages ("sentinel url", "cluster url")."""
    out: list[tuple[str, int]] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"{what}: empty host in the list of hosts")
        if item.startswith("["):  # [IPv6]:port
            end = item.find("]")
            if end < 0:
                raise ValueError(f"{what}: bad host {item!r}")
            host, rest = item[1:end], item[end + 1:]
            if rest and not rest.startswith(":"):
                raise ValueError(f"{what}: bad host {item!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"{what}: bad host {item!r}")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{what}: bad port in {item!r}")
            port = int(port_text)
        out.append((unquote(host), port))
    return out


def _userinfo(netloc: str, kw: dict[str, Any]) -> str:
    """A several-host netloc's ``[user][:password]@`` into kw (percent-decoded); the
    host list after it."""
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            kw["username"] = unquote(user)
        if colon and password:
            kw["password"] = unquote(password)
    return hosts


def _parse_sentinel_url(url: str, scheme: str) -> dict[str, Any]:
    parts = urlsplit(url)
    kw: dict[str, Any] = {"ssl": True} if scheme == "rediss+sentinel" else {}
    hosts = _userinfo(parts.netloc, kw)
    kw["sentinels"] = _hosts(hosts, SENTINEL_PORT, "sentinel url")
    path = [p for p in parts.path.split("/") if p]
    if len(path) > 2:
        raise ValueError("sentinel url path must be /service_name[/db]")
    if path:
        kw["service_name"] = unquote(path[0])
    if len(path) == 2:
        kw["db"] = _int("db", path[1])
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        convert = OPTIONS.get(name) or SENTINEL_OPTIONS.get(name)
        if convert is None:
            known = ", ".join(sorted([*OPTIONS, *SENTINEL_OPTIONS]))
            raise ValueError(f"unknown url option {name!r} (known: {known})")
        kw[name] = convert(name, values[-1])
    if not kw.get("ssl") and not kw.get("sentinel_ssl") and \
            any(name.startswith("ssl_") for name in kw):
        raise ValueError("url options ssl_* need rediss+sentinel://, ssl=true or "
                         "sentinel_ssl=true (TLS); this url would connect in plaintext")
    if "service_name" not in kw:
        raise ValueError("sentinel url needs the service name: "
                         "redis+sentinel://host:port,.../service_name[/db]")
    return kw


def parse_url(url: str) -> dict[str, Any]:
    """The constructor keywords a URL stands for (see the module docstring)."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = url.partition(":")[0].lower()
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _parse_sentinel_url(url, scheme)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss") and "," in parts.netloc:
        return _parse_cluster_url(url, scheme)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("url scheme must be redis://, rediss://, unix://, "
                         "redis+sentinel:// or rediss+sentinel://")
    kw: dict[str, Any] = {"ssl": True} if scheme == "rediss" else {}
    if parts.username:
        kw["username"] = unquote(parts.username)
    if parts.password:
        kw["password"] = unquote(parts.password)
    if scheme == "unix":
        kw["unix_socket_path"] = parts.path
    else:
        if parts.hostname:
            kw["host"] = parts.hostname
        if parts.port is not None:  # (a port that is not a number raises ValueError)
            kw["port"] = parts.port
        if len(parts.path) > 1:  # /db
            kw["db"] = _int("db", parts.path[1:])
    _query(parts.query, scheme, kw)
    return kw


def _query(query: str, scheme: str, kw: dict[str, Any]) -> None:
    """A redis://, rediss:// or unix:// url's query options into kw."""
    known = OPTIONS if scheme == "unix" else {**OPTIONS, **CLUSTER_OPTIONS}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        convert = known.get(name)
        if convert is None:
            raise ValueError(f"unknown url option {name!r} (known: {', '.join(sorted(known))})")
        if name.startswith("ssl_") and scheme != "rediss":
            raise ValueError(f"url option {name} needs a rediss:// url (TLS); this one "
                             f"would connect in plaintext")
        kw[name] = convert(name, values[-1])


def _parse_cluster_url(url: str, scheme: str) -> dict[str, Any]:
    """redis://[userinfo@]host:port,host:port.../0?cluster=true: startup_nodes."""
    parts = urlsplit(url)
    kw: dict[str, Any] = {"ssl": True} if scheme == "rediss" else {}
    hosts = _userinfo(parts.netloc, kw)
    kw["startup_nodes"] = _hosts(hosts, 6379, "cluster url")
    if len(parts.path) > 1:  # /db
        kw["db"] = _int("db", parts.path[1:])
    _query(parts.query, scheme, kw)
    return kw
