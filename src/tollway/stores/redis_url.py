"""What a Redis store URL means: the URL redis-py understands, and whether it names a cluster."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from tollway.errors import ConfigurationError

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def split_url(url: str) -> tuple[str, bool]:
    """The URL redis-py understands, and whether it names a cluster."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(
            f"store url: {url!r} has scheme {parts.scheme!r}; expected one of memory, "
            + ", ".join(SCHEMES)
        )
    if not parts.hostname:
        raise ConfigurationError(
            f"store url: {url!r} names no host; expected e.g. redis://127.0.0.1:6379/0"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ConfigurationError(f"store url: {url!r} has a bad port; expected 1-65535")
    cluster = parts.scheme.endswith("+cluster")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigurationError(
            f"store url: {url!r} names database {database!r}; expected a number such as /0"
        )
    if cluster and database not in ("", "0"):
        raise ConfigurationError(
            f"store url: {url!r} names database {database}; a Redis Cluster has only /0"
        )
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment)), cluster


__all__ = ["SCHEMES", "split_url"]
