"""Shared pytest set-up: each area's fixtures live in tests/support/ and are listed here."""

pytest_plugins: list[str] = []
