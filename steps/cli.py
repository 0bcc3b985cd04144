"""``python -m steps <step>``: the one entry every workflow container runs.

Each step module exposes a click command; this group only collects them, sets up logging and
turns every expected failure into one line on stderr and an exit code (2 bad input, 1 failure).
Heavy libraries (torch, llmcompressor) are imported inside the quantize step, not here, so
``python -m steps download`` starts fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import click
from pydantic import BaseModel

from steps import redact
from steps.errors import SynesisError

log = logging.getLogger("steps")


def configure_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redact.RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "botocore", "boto3", "filelock", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_step(work: Callable[[], BaseModel]) -> None:
    """Run a step body, print its result as one JSON line on stdout, map failures to exit codes.

    The JSON line is last on stdout so Argo output parameters and scripts can take it.
    """
    try:
        result = work()
    except SynesisError as exc:
        log.debug("step failed", exc_info=True)
        click.echo(f"error: {redact.redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(result.model_dump_json())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (secrets stay masked).")
def cli(verbose: bool) -> None:
    """Synesis Pipelines steps: download, quantize, build, verify, cleanup, check-markers."""
    configure_logging(verbose)


def _register() -> None:
    # Each step module adds its command here as it lands; imports stay light (see module doc).
    pass


_register()


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="python -m steps")
