"""One error hierarchy for every step, so the CLI can map any failure to one line and an exit code.

Messages name the input at fault and the fix; causes are chained with ``from`` so a debug log
still has the traceback, but the user sees a single line.
"""

from __future__ import annotations


class SynesisError(Exception):
    """Base of every expected failure; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class BadInputError(SynesisError, ValueError):
    """The user gave something we cannot work with: fixing the input fixes the run (exit 2)."""

    exit_code = 2


class ConfigError(BadInputError):
    """A config file or environment override is malformed or out of range."""


class RemoteError(SynesisError):
    """A remote service (Hub, registry, Argo) failed or refused us (exit 1)."""


class AuthError(RemoteError):
    """Credentials were missing, wrong or expired."""


class InsufficientSpaceError(SynesisError, OSError):
    """The destination volume cannot hold what the step is about to write."""


class HubError(RemoteError):
    """The Hugging Face Hub (or its stand-in) failed or refused a request."""


class RegistryError(RemoteError):
    """An OCI registry failed or refused a request."""


class QuantizeError(SynesisError):
    """Quantization could not run or produced a result that failed its checks."""


class BuilderError(SynesisError):
    """A local image builder (buildah, skopeo) failed or cannot run on this machine."""


class ImageVerifyError(SynesisError):
    """A built image exists but breaks a ModelCar check (layer over cap, file missing, no sh)."""
