"""Image references: ``oci:DIR[:TAG|@DIGEST]`` layouts and ``HOST[:PORT]/REPO[:TAG|@DIGEST]``.

Parsed strictly (the distribution reference grammar) so a typo fails before any byte moves,
with one line naming the reference and the expected shape. The registry host is always
explicit: there is no implicit Docker Hub, because a wrong default would push a model to the
public internet. ``oci://`` and ``docker://`` prefixes are accepted (KServe's ``storageUri``
and skopeo's transport names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from steps.errors import BadInputError

_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"^{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]{{1,5}})?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

_SHAPE = "expected HOST[:PORT]/REPO[:TAG|@sha256:DIGEST] or oci:DIR[:TAG]"


@dataclass(frozen=True)
class RegistryRef:
    host: str  # host[:port]
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when known, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> RegistryRef:
        return RegistryRef(self.host, self.repository, None, digest)

    def oci_uri(self) -> str:
        """The form KServe's ``storageUri`` takes."""
        assert self.digest is not None
        return f"oci://{self.host}/{self.repository}@{self.digest}"

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class LayoutRef:
    path: Path
    tag: str | None = None
    digest: str | None = None

    def with_digest(self, digest: str) -> LayoutRef:
        return LayoutRef(self.path, None, digest)

    def oci_uri(self) -> str:
        assert self.digest is not None
        return f"oci:{self.path}@{self.digest}"

    def __str__(self) -> str:
        text = f"oci:{self.path}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


ImageRef = RegistryRef | LayoutRef


def _bad(text: str, why: str) -> BadInputError:
    return BadInputError(f"image reference {text!r}: {why}; {_SHAPE}")


def _split_digest(text: str, rest: str) -> tuple[str, str | None]:
    if "@" not in rest:
        return rest, None
    rest, digest = rest.rsplit("@", 1)
    if not _DIGEST.match(digest):
        raise _bad(text, f"digest {digest!r} is not sha256:<64 hex>")
    return rest, digest


def parse_layout(text: str) -> LayoutRef:
    body = text[len("oci:") :]
    body, digest = _split_digest(text, body)
    # Like skopeo's oci transport: the path ends at the first ':' (so paths cannot hold ':').
    path, sep, tag = body.partition(":")
    if not path:
        raise _bad(text, "the layout directory is empty")
    if sep and not _TAG.match(tag):
        raise _bad(text, f"tag {tag!r} is not valid")
    return LayoutRef(Path(path).absolute(), tag or None, digest)


def parse_registry(text: str) -> RegistryRef:
    body = text
    for scheme in ("oci://", "docker://"):
        if body.startswith(scheme):
            body = body[len(scheme) :]
            break
    if "://" in body:
        raise _bad(text, "unknown scheme")
    body, digest = _split_digest(text, body)
    host, slash, remainder = body.partition("/")
    if not slash or not remainder:
        raise _bad(text, "no repository after the registry host")
    if not _HOST.match(host) or not ("." in host or ":" in host or host == "localhost"):
        raise _bad(text, f"{host!r} is not a registry host (name it in full, e.g. quay.io)")
    repo, tag = remainder, None
    last = remainder.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = remainder.rsplit(":", 1)
        if not _TAG.match(tag):
            raise _bad(text, f"tag {tag!r} is not valid")
    for component in repo.split("/"):
        if not _PATH_COMPONENT.match(component):
            raise _bad(text, f"repository part {component!r} must be lower-case [a-z0-9._-]")
    if len(host) + 1 + len(repo) > 255:
        raise _bad(text, "name is longer than 255 characters")
    return RegistryRef(host, repo, tag, digest)


def parse_ref(text: str) -> ImageRef:
    """Parse a target or source reference; malformed input raises ``BadInputError``."""
    text = text.strip()
    if not text:
        raise _bad(text, "it is empty")
    if text.startswith("oci:") and not text.startswith("oci://"):
        return parse_layout(text)
    return parse_registry(text)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "127.0.0.1", "[::1]") or name.startswith("127.")
