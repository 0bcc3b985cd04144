"""Progress reporting: plain periodic lines off a TTY, in-place redraws on one, N/M for Argo."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from steps import progress as progress_module
from steps.errors import ConfigError
from steps.progress import Progress, format_duration

MIB = 1024 * 1024


class FakeTty(io.StringIO):
    """A stream that says it is a terminal (the only stand-in: pytest owns the real one)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("ARGO_PROGRESS_FILE", "SYNESIS_NO_PROGRESS", "SYNESIS_PROGRESS_INTERVAL"):
        monkeypatch.delenv(variable, raising=False)


def test_non_tty_prints_plain_lines_without_carriage_returns() -> None:
    stream = io.StringIO()
    with Progress("download x", total_bytes=4 * MIB, total_items=2, stream=stream, interval=0) as p:
        for _ in range(4):
            p.advance(MIB)
        p.item_done(2)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) >= 5  # one per update with interval 0, plus the final line
    assert lines[-1].startswith("download x: 4.0 MiB / 4.0 MiB (100%)")
    assert "[2/2] done in 0:00:00" in lines[-1]


def test_non_tty_respects_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNESIS_PROGRESS_INTERVAL", "3600")
    stream = io.StringIO()
    with Progress("x", total_bytes=100, total_items=1, stream=stream) as p:
        for _ in range(100):
            p.advance(1)
    assert len(stream.getvalue().splitlines()) == 1  # only the final line


def test_tty_redraws_one_line_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "_TTY_REDRAW_SECONDS", 0.0)
    stream = FakeTty()
    with Progress("x", total_bytes=3 * MIB, total_items=1, stream=stream) as p:
        for _ in range(3):
            p.advance(MIB)
    text = stream.getvalue()
    assert text.count("\r") >= 4  # three redraws and the final line
    assert text.count("\n") == 1 and text.endswith("\x1b[K\n")
    assert "\x1b[K" in text


def test_stopped_is_reported_when_the_block_fails() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress("x", total_bytes=10, total_items=1, stream=stream):
        raise RuntimeError("boom")
    assert "stopped in" in stream.getvalue()


def test_progress_file_gets_items_done_over_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "argo" / "progress"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(target))
    seen: list[str] = []
    with Progress("x", total_bytes=10, total_items=3, stream=io.StringIO()) as p:
        seen.append(target.read_text())
        p.item_done()
        seen.append(target.read_text())
        p.item_done(2)
        seen.append(target.read_text())
    assert seen == ["0/3\n", "1/3\n", "3/3\n"]
    assert list(target.parent.iterdir()) == [target]  # no temp files left beside it


def test_disabled_progress_prints_nothing_but_still_feeds_argo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "progress"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(target))
    monkeypatch.setenv("SYNESIS_NO_PROGRESS", "1")
    stream = io.StringIO()
    with Progress("x", total_bytes=10, total_items=1, stream=stream, interval=0) as p:
        p.advance(10)
        p.item_done()
    assert stream.getvalue() == ""
    assert target.read_text() == "1/1\n"


def test_bad_interval_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNESIS_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="SYNESIS_PROGRESS_INTERVAL"):
        Progress("x", total_bytes=1, total_items=1, stream=io.StringIO())


def test_counts_are_exact_under_threads() -> None:
    p = Progress("x", total_bytes=8 * 1000, total_items=8, stream=io.StringIO(), interval=0)

    def work() -> None:
        for _ in range(1000):
            p.advance(1)
        p.item_done()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert p.done_bytes == 8000 and p.done_items == 8


def test_line_shows_rate_eta_and_counts() -> None:
    p = Progress("dl", total_bytes=10 * MIB, total_items=4, stream=io.StringIO())
    p._start -= 2.0  # as if two seconds had passed
    p.advance(4 * MIB)
    line = p.line()
    assert line.startswith("dl: 4.0 MiB / 10.0 MiB (40%) ")
    assert "MiB/s ETA 0:00:0" in line and line.endswith("[0/4]")


def test_line_before_any_byte_and_with_nothing_to_do() -> None:
    assert "ETA ?" in Progress("x", total_bytes=10, total_items=1, stream=io.StringIO()).line()
    assert "(100%)" in Progress("x", total_bytes=0, total_items=0, stream=io.StringIO()).line()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00:00"), (59.9, "0:00:59"), (3661, "1:01:01"), (-5, "0:00:00")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
