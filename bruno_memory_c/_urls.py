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


def parse_url(url: str) -> dict[str, Any]:
    """The constructor keywords a URL stands for (see the module docstring)."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("url scheme must be redis://, rediss:// or unix://")
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
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        convert = OPTIONS.get(name)
        if convert is None:
            known = ", ".join(sorted(OPTIONS))
            raise ValueError(f"unknown url option {name!r} (known: {known})")
        if name.startswith("ssl_") and scheme != "rediss":
            raise ValueError(f"url option {name} needs a rediss:// url (TLS); this one "
                             f"would connect in plaintext")
        kw[name] = convert(name, values[-1])
    return kw
