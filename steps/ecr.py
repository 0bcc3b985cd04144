"""Amazon ECR: short-lived registry passwords from boto3, and repositories made on demand.

Credentials come from boto3's default chain (IRSA's web identity in the cluster, env vars or a
profile elsewhere); the ECR token is fetched just before it is needed and again after a 401,
since it lives 12 hours and a 70B push can outlast a stale one. ``AWS_ENDPOINT_URL_ECR`` (read
by boto3 itself) points everything at a stand-in such as moto for tests.
"""

from __future__ import annotations

import base64
import re
import threading
from typing import Any

from steps import redact
from steps.errors import AuthError, RegistryError
from steps.registry_auth import Credentials

_ECR_HOST = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$"
)


def is_ecr_host(host: str) -> bool:
    return _ECR_HOST.match(host.split(":")[0]) is not None


def _host_region_account(host: str) -> tuple[str | None, str | None]:
    match = _ECR_HOST.match(host.split(":")[0])
    if match is None:
        return None, None
    return match.group("region"), match.group("account")


def _client(host: str) -> Any:
    import boto3
    from botocore.config import Config

    region, _account = _host_region_account(host)
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("ecr", region_name=region, config=config)


def _aws_error(exc: Exception, what: str) -> Exception:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    if isinstance(exc, NoCredentialsError):
        return AuthError(
            f"ECR {what}: no AWS credentials found; attach the IRSA role to the service "
            "account or set AWS credentials"
        )
    if isinstance(exc, NoRegionError):
        return AuthError(f"ECR {what}: no AWS region; set AWS_REGION or use an ECR host name")
    if isinstance(exc, EndpointConnectionError):
        return RegistryError(f"ECR {what}: cannot reach the ECR API; check network and region")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "error")
        if code in ("AccessDeniedException", "UnrecognizedClientException"):
            return AuthError(
                f"ECR {what}: AWS refused ({code}); grant the role ecr:GetAuthorizationToken "
                "and push permissions"
            )
        return RegistryError(f"ECR {what}: AWS answered {code}")
    if isinstance(exc, BotoCoreError):
        return RegistryError(f"ECR {what}: {type(exc).__name__}")
    return exc


class EcrAuth:
    """Basic credentials ``AWS:<token>`` from ``ecr.get_authorization_token``, cached until 401."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._creds: Credentials | None = None

    def describe(self) -> str:
        return "ECR authorization token (boto3 default credential chain)"

    def credentials(self, *, refresh: bool = False) -> Credentials | None:
        with self._lock:
            if self._creds is None or refresh:
                self._creds = self._fetch()
            return self._creds

    def _fetch(self) -> Credentials:
        try:
            answer = _client(self.host).get_authorization_token()
        except Exception as exc:
            raise _aws_error(exc, f"token for {self.host}") from None
        data = answer.get("authorizationData") or []
        if not data:
            raise AuthError(f"ECR token for {self.host}: AWS returned no authorization data")
        encoded = data[0]["authorizationToken"]
        redact.register_secret(encoded)
        decoded = base64.b64decode(encoded).decode("utf-8")
        username, _, password = decoded.partition(":")
        redact.register_secret(password)
        return Credentials(username, password, source="ECR")


def ensure_repository(host: str, repository: str) -> bool:
    """Create ``repository`` in ECR when it does not exist; True when it was created."""
    client = _client(host)
    try:
        client.describe_repositories(repositoryNames=[repository])
        return False
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code != "RepositoryNotFoundException":
            raise _aws_error(exc, f"repository {repository}") from None
    try:
        client.create_repository(repositoryName=repository)
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code == "RepositoryAlreadyExistsException":  # created concurrently: fine
            return False
        raise _aws_error(exc, f"creating repository {repository}") from None
    return True
