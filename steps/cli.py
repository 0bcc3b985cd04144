"""``python -m steps <step>``: the one entry every workflow container runs.

Each step module exposes a click command; this group only collects them, sets up logging and
turns every expected failure into one line on stderr and an exit code (2 bad input, 1 failure).
Heavy libraries (torch, llmcompressor) are imported inside the quantize step, not here, so
``python -m steps download`` starts fast.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence

import click
from pydantic import BaseModel

from steps import redact, settings
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
    write_outputs(result)
    click.echo(result.model_dump_json())


def write_outputs(result: BaseModel) -> None:
    """Also write each top-level result field to ``$SYNESIS_OUTPUTS_DIR/<field>`` when set.

    Argo output parameters can only be read from files (``valueFrom.path``), so the workflow
    templates set ``SYNESIS_OUTPUTS_DIR`` and declare one output per field they show in the UI.
    Strings are written as they are, booleans as ``true``/``false``, None as an empty file and
    anything else as JSON. Nothing is written on failure, like markers.
    """
    directory = settings.outputs_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in result.model_dump(mode="json").items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            text = ""
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, sort_keys=True)
        (directory / key).write_text(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (secrets stay masked).")
def cli(verbose: bool) -> None:
    """Synesis Pipelines steps: download, quantize, build, verify, cleanup, check-markers."""
    configure_logging(verbose)


def _register() -> None:
    # Each step module adds its command here as it lands; imports stay light (see module doc).
    from steps import check_markers

    cli.add_command(check_markers.command)
    from steps import download

    cli.add_command(download.command)
    from steps import quantize

    cli.add_command(quantize.command)
    from steps import build, cleanup, verify

    cli.add_command(build.build_command)
    cli.add_command(verify.verify_command)
    cli.add_command(cleanup.cleanup_command)


_register()


def run_cli(group: click.Group, argv: Sequence[str] | None, prog_name: str) -> None:
    """Run a click group so a usage error (missing option, bad value) is one ``error:`` line.

    Shared by ``python -m steps`` and ``workflows/submit.py``: click's own multi-line usage
    block would break the one-line error rule that the workflows' logs and users rely on.
    """
    try:
        group.main(
            args=list(argv) if argv is not None else None,
            prog_name=prog_name,
            standalone_mode=False,
        )
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog_name
        click.echo(f"error: {exc.format_message().rstrip('.')}; see '{where} --help'", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted; run the same command again to resume", err=True)
        sys.exit(130)


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(cli, argv, "python -m steps")
