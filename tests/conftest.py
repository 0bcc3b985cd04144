"""Shared pytest set-up: each area's fixtures live in tests/support/ and are listed here."""

pytest_plugins: list[str] = [
    "tests.support.hub_server",
    "tests.support.tiny_models",
    "tests.support.argo_server",
    "tests.support.kube_server",
    "tests.support.registry",
    "tests.support.faults",
]
