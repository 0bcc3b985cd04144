"""Registry credentials: the containers ``auth.json`` file, or ECR tokens, behind one interface.

The registry client asks an ``Authenticator`` for credentials when a registry challenges it, and
asks again with ``refresh=True`` after a 401 (ECR tokens expire after 12 hours). Every secret is
registered with ``steps.redact`` the moment it is read, and ``Credentials`` never prints its
password.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from steps import redact, settings
from steps.errors import ConfigError

AuthMode = str  # "auto" | "ecr" | "authfile" | "none"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # where they came from, for error messages (never the secret)


class Authenticator(Protocol):
    """Gives credentials for one registry host; ``describe`` says where they come from."""

    def credentials(self, *, refresh: bool = False) -> Credentials | None: ...

    def describe(self) -> str: ...


class Anonymous:
    def credentials(self, *, refresh: bool = False) -> Credentials | None:
        return None

    def describe(self) -> str:
        return "no credentials"


class StaticAuth:
    def __init__(self, creds: Credentials | None, description: str) -> None:
        if creds is not None:
            redact.register_secret(creds.password)
        self._creds = creds
        self._description = description

    def credentials(self, *, refresh: bool = False) -> Credentials | None:
        return self._creds

    def describe(self) -> str:
        return self._description


def _host_keys(host: str, repository: str | None) -> list[str]:
    """auth.json keys that may hold ``host``'s login, most specific first."""
    keys: list[str] = []
    if repository:
        parts = repository.split("/")
        for i in range(len(parts), 0, -1):
            keys.append(f"{host}/{'/'.join(parts[:i])}")
    keys += [
        host,
        f"https://{host}",
        f"http://{host}",
        f"https://{host}/v1/",
        f"https://{host}/v2/",
    ]
    return keys


def read_auth_file(path: Path, host: str, repository: str | None = None) -> Credentials | None:
    """Credentials for ``host`` from a containers/Docker auth file, or None when it has none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"registry auth file {path}: unreadable or not JSON; fix it or log in again"
        ) from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in _host_keys(host, repository):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"registry auth file {path}: entry {key!r} has a malformed 'auth' value; "
                    "log in again"
                ) from exc
            redact.register_secret(encoded)
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ConfigError(
                    f"registry auth file {path}: entry {key!r} is not user:password; log in again"
                )
            redact.register_secret(password)
            return Credentials(username, password, source=f"auth file {path}")
    return None


def find_auth_file_credentials(
    host: str, repository: str | None, explicit: Path | None
) -> tuple[Credentials | None, str]:
    """Search the explicit file, then the standard locations; return creds and a description."""
    if explicit is not None:
        if not explicit.exists():
            raise ConfigError(
                f"registry auth file {explicit} does not exist; fix registry.auth_file "
                "or REGISTRY_AUTH_FILE"
            )
        candidates = [explicit]
    else:
        candidates = settings.registry_auth_files()
    for path in candidates:
        creds = read_auth_file(path, host, repository)
        if creds is not None:
            return creds, f"auth file {path}"
    searched = ", ".join(str(p) for p in candidates)
    return None, f"no entry for {host} in {searched}"


def make_authenticator(
    host: str,
    repository: str | None,
    *,
    mode: AuthMode = "auto",
    auth_file: Path | None = None,
) -> Authenticator:
    """The authenticator for ``host`` under ``mode`` (``auto``: ECR for ECR hosts, else file)."""
    from steps import ecr  # boto3 is only imported when ECR is in play

    if mode not in ("auto", "ecr", "authfile", "none"):
        raise ConfigError(f"registry auth mode {mode!r}: choose auto, ecr, authfile or none")
    if mode == "none":
        return Anonymous()
    if mode == "ecr" or (mode == "auto" and ecr.is_ecr_host(host)):
        return ecr.EcrAuth(host)
    creds, description = find_auth_file_credentials(host, repository, auth_file)
    return StaticAuth(creds, description)
