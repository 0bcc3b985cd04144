"""Calibration and held-out text for quantization, from a Hub dataset or a local file.

Rows are shuffled with the recipe's seed; the first ``num_samples`` calibrate, the next few are
held out for the quality report, so the report never scores text the scales were fitted on.
A ``messages`` column (chat turns) goes through the tokenizer's chat template, like the
conversations the served model will see. The dataset is read (and its column checked) before
the model loads: a typo in ``column`` costs seconds, not a 141 GB load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from steps.errors import BadInputError, RemoteError
from steps.recipes import LOCAL_DATASET_SUFFIXES, Calibration

log = logging.getLogger(__name__)

# Rows read past the ones we use: enough for a shuffle of a streamed Hub split.
_STREAM_SHUFFLE_BUFFER = 10_000


@dataclass(frozen=True)
class CalibrationRows:
    calibration: list[Any]
    held_out: list[Any]
    source: str


def load_rows(calibration: Calibration, *, held_out: int) -> CalibrationRows:
    """Read ``num_samples + held_out`` rows; a missing column is a ``BadInputError``."""
    import datasets

    wanted = calibration.num_samples + held_out
    where = calibration.describe()
    try:
        if calibration.path is not None:
            builder = LOCAL_DATASET_SUFFIXES[calibration.path.suffix.lower()]
            table = datasets.load_dataset(builder, data_files=str(calibration.path), split="train")
            columns = list(table.column_names)
            _check_column(calibration, columns)
            table = table.shuffle(seed=calibration.seed)
            rows = [row[calibration.column] for row in table.select(range(min(wanted, len(table))))]
        else:
            stream = datasets.load_dataset(
                calibration.dataset,
                calibration.config_name,
                split=calibration.split,
                streaming=True,
            )
            stream = stream.shuffle(seed=calibration.seed, buffer_size=_STREAM_SHUFFLE_BUFFER)
            rows = []
            for row in stream.take(wanted):
                _check_column(calibration, list(row))
                rows.append(row[calibration.column])
    except BadInputError:
        raise
    except FileNotFoundError as exc:
        raise BadInputError(f"calibration dataset {where}: not found; fix the recipe") from exc
    except (datasets.exceptions.DatasetNotFoundError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(f"calibration dataset {where}: {first}; fix the recipe") from exc
    except (OSError, ConnectionError) as exc:
        raise RemoteError(f"calibration dataset {where}: could not be read ({exc})") from exc
    if not rows:
        raise BadInputError(f"calibration dataset {where}: no rows; give a non-empty dataset")
    if len(rows) <= calibration.num_samples:
        log.warning(
            "calibration dataset %s has %d rows (num_samples %d): all calibrate, "
            "the quality check uses built-in text",
            where,
            len(rows),
            calibration.num_samples,
        )
        return CalibrationRows(calibration=rows, held_out=[], source=where)
    return CalibrationRows(
        calibration=rows[: calibration.num_samples],
        held_out=rows[calibration.num_samples :],
        source=where,
    )


def _check_column(calibration: Calibration, columns: list[str]) -> None:
    if calibration.column not in columns:
        raise BadInputError(
            f"calibration dataset {calibration.describe()}: column {calibration.column!r} not "
            f"found (columns: {', '.join(columns) or 'none'}); set calibration.column"
        )


def render(row: Any, tokenizer: Any) -> tuple[str, bool]:
    """Text for one row, and whether the chat template (which adds its own BOS) was applied."""
    if isinstance(row, str):
        return row, False
    if isinstance(row, list) and all(isinstance(turn, dict) for turn in row):
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(row, tokenize=False), True
        return "\n".join(str(turn.get("content", "")) for turn in row), False
    raise BadInputError(
        f"calibration row of type {type(row).__name__}: expected text or a list of chat "
        "messages; point calibration.column at a text or messages column"
    )


def tokenize(rows: list[Any], tokenizer: Any, *, max_length: int) -> dict[str, list[list[int]]]:
    """Token ids and attention masks, as llmcompressor's oneshot takes them in a Dataset."""
    ids: list[list[int]] = []
    masks: list[list[int]] = []
    for row in rows:
        text, templated = render(row, tokenizer)
        encoded = tokenizer(
            text, truncation=True, max_length=max_length, add_special_tokens=not templated
        )
        if len(encoded["input_ids"]) == 0:
            continue
        ids.append(list(encoded["input_ids"]))
        masks.append(list(encoded["attention_mask"]))
    return {"input_ids": ids, "attention_mask": masks}
