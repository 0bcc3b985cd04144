"""Quantize a downloaded checkpoint with llmcompressor ``oneshot`` into a compressed-tensors one.

Order of work, cheapest check first, so a bad run fails in seconds and a finished one is skipped
without importing torch:

1. read ``config.json`` and the recipe (validated), fingerprint the inputs, check the marker;
2. preflight: disk, CPU RAM and GPU memory against the model's size (from safetensors headers);
3. read the calibration rows (the column is checked here, before the model loads);
4. load the model on the CPU; llmcompressor's sequential pipeline onloads one decoder layer at a
   time to the GPU when there is one (on a machine without, everything runs on the CPU);
5. logits on held-out text *before* quantizing; ``oneshot``; ``save_pretrained(...,
   save_compressed=True)`` into a temp dir next to ``dest``; source tokenizer, chat template and
   generation config copied verbatim (vLLM reads them as shipped);
6. reload the saved checkpoint, logits *after*, quality report (``quality.json``), gates;
7. rename the temp dir into place, then write the marker.

Progress: torch forward pre-hooks on the decoder layers tell which layer the calibration pass
has reached. They depend only on public torch API and the model's own layer classes, not on
llmcompressor's internals (its per-subgraph loop and tqdm texts change between releases).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ConfigDict

from steps import calibration, markers, preflight, recipes
from steps.errors import BadInputError, QuantizeError
from steps.fsutil import atomic_write_text, ensure_free_space, fsync_dir, human_bytes
from steps.progress import Progress
from steps.quality import BUILTIN_TEXT, QualityReport

STEP = "quantize"
QUALITY_FILE = "quality.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# Written by save_pretrained for the quantized model; the source's versions would be wrong.
_OWN_FILES = {"config.json", "model.safetensors.index.json", "recipe.yaml", QUALITY_FILE}

log = logging.getLogger(__name__)


class QuantizeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    src: str
    dest: str
    recipe: str
    scheme: str
    format: str
    files: list[str]
    bytes: int
    input_bytes: int
    device: str
    layers: int
    calibration_seconds: float
    seconds: float
    quality: QualityReport | None
    skipped: bool = False


def _read_model_config(src: Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise BadInputError(
            f"source {src}: no config.json; point --src at a downloaded Hugging Face model dir"
        )
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise BadInputError(f"{path}: not valid JSON; re-download the model") from exc
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise BadInputError(
            f"source {src}: already quantized ({method}); quantize the full-precision model"
        )
    if not preflight.weight_files(src):
        raise BadInputError(
            f"source {src}: no *.safetensors weights; download them (pickled .bin is not read)"
        )
    return config


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError as exc:
        raise QuantizeError(
            f"{package} is not installed; install the quantize extra: pip install '.[quantize]'"
        ) from exc


def _source_fingerprint(src: Path, state_dir: Path) -> dict[str, Any]:
    """The download marker's fingerprint, else names, sizes and mtimes of the source files."""
    download = markers.read_marker(state_dir, "download")
    if download is not None:
        return {"download": download.fingerprint}
    files = []
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            files.append([relative.as_posix(), stat.st_size, stat.st_mtime_ns])
    return {"files": markers.fingerprint({"files": files})}


def _fingerprint_inputs(
    src: Path, dest: Path, state_dir: Path, recipe: recipes.Recipe
) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "src": str(src.absolute()),
        "dest": str(dest.absolute()),
        "source": _source_fingerprint(src, state_dir),
        "recipe": recipe.fingerprint(),
        "llmcompressor": _version("llmcompressor"),
        "compressed_tensors": _version("compressed-tensors"),
    }
    if recipe.calibration is not None and recipe.calibration.path is not None:
        stat = recipe.calibration.path.stat()
        inputs["calibration_file"] = [stat.st_size, stat.st_mtime_ns]
    return inputs


def _decoder_layers(model: Any) -> list[Any]:
    """The modules llmcompressor calibrates one at a time: the model's no-split layer classes."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        inner = getattr(model, "model", None)
        layers = list(getattr(inner, "layers", []) or [])
    return layers


class _LayerProgress:
    """Turns the first forward call into each decoder layer into ``layer i/N`` progress."""

    def __init__(self, model: Any, progress: Progress, layer_bytes: int) -> None:
        self._progress = progress
        self._layer_bytes = layer_bytes
        self._layers = _decoder_layers(model)
        self._current = -1
        self._started = time.monotonic()
        self._handles = [
            layer.register_forward_pre_hook(self._hook(index))
            for index, layer in enumerate(self._layers)
        ]

    @property
    def total(self) -> int:
        return len(self._layers)

    def _hook(self, index: int) -> Any:
        def hook(_module: Any, _args: Any) -> None:
            if index <= self._current:
                return
            self._mark_done(index)
            elapsed = time.monotonic() - self._started
            log.info("calibrating layer %d/%d (%.1f s elapsed)", index + 1, self.total, elapsed)

        return hook

    def _mark_done(self, upto: int) -> None:
        """Count layers before ``upto`` as done (a layer is done when the next one starts)."""
        for _ in range(max(self._current, 0), upto):
            self._progress.advance(self._layer_bytes)
            self._progress.item_done()
        self._current = upto

    def close(self, *, ok: bool) -> None:
        for handle in self._handles:
            handle.remove()
        if ok:
            self._mark_done(self.total)


def _copy_source_extras(src: Path, out: Path) -> list[str]:
    """Copy the source's top-level non-weight files (tokenizer, chat template, generation
    config, licence) over whatever save_pretrained wrote: the shipped versions are what vLLM
    and the model's users expect, byte for byte."""
    copied = []
    for path in sorted(src.iterdir()):
        if (
            path.is_file()
            and not path.name.startswith(".")
            and path.name not in _OWN_FILES
            and not path.name.endswith(_WEIGHT_SUFFIXES)
            and not path.name.endswith(".index.json")
        ):
            shutil.copy2(path, out / path.name)
            copied.append(path.name)
    return copied


def _dir_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _remove_stale(dest: Path) -> None:
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in dest.parent.glob(f".{dest.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    """0644/0755: some writers use private temp files, and the image must be world-readable."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Replace ``dest`` by ``tmp`` with renames: readers see the old tree or the new one."""
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def _drop_module_globals(model: Any) -> None:
    """Forget the model where llmcompressor's sequential tracing (0.14) leaves it behind.

    Its tracer executes each layer's rewritten ``forward`` in (a copy of) the modeling module's
    globals with ``self`` bound to the model, and ``torch.fx.wrap`` keeps those namespaces in
    a module-level registry. Left alone, they keep 141 GB alive through the quality reload.
    """
    namespaces: list[dict[str, Any]] = []
    for name, module in list(sys.modules.items()):
        if name.startswith("transformers.models."):
            # __dict__, not getattr: transformers' lazy modules import on attribute access.
            namespaces.append(getattr(module, "__dict__", {}))
    fx_trace = sys.modules.get("torch.fx._symbolic_trace")
    registry = getattr(fx_trace, "_wrapped_fns_to_patch", {})
    if isinstance(registry, dict):
        namespaces += [value for value in registry.values() if isinstance(value, dict)]
    for namespace in namespaces:
        for key in [key for key, value in namespace.items() if value is model]:
            del namespace[key]


def _build_modifier(recipe: recipes.Recipe, ignore: list[str]) -> Any:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    cls = GPTQModifier if recipe.modifier == "GPTQModifier" else QuantizationModifier
    return cls(targets=list(recipe.targets), scheme=recipe.scheme, ignore=ignore)


def quantize(
    *,
    src: Path,
    dest: Path,
    recipe: str | Path = "nvfp4",
    state_dir: Path | None = None,
) -> QuantizeResult:
    """Quantize the model in ``src`` into a compressed-tensors checkpoint at ``dest``.

    Args:
        src: a downloaded Hugging Face model directory (config.json + safetensors).
        dest: where the quantized model goes; replaced atomically when the run succeeds.
        recipe: a recipe name under ``config/recipes`` or a YAML path.
        state_dir: marker directory; defaults to ``<dest parent>/.synesis``.

    Returns:
        A ``QuantizeResult``; ``skipped`` is True when the marker says the work is done.

    Raises:
        BadInputError: no config.json/weights, a bad recipe, a missing dataset column.
        QuantizeError: not enough memory, llmcompressor failed, or a quality gate failed.
    """
    started = time.monotonic()
    src, dest = Path(src).absolute(), Path(dest).absolute()
    model_config = _read_model_config(src)
    loaded_recipe = recipes.load_recipe(recipe)
    state_dir = Path(state_dir) if state_dir is not None else markers.default_state_dir(dest)
    inputs = _fingerprint_inputs(src, dest, state_dir, loaded_recipe)
    done = markers.find_done(state_dir, STEP, inputs)
    if done is not None and (dest / "config.json").is_file():
        outputs = {**done.outputs, "skipped": True, "seconds": time.monotonic() - started}
        log.info("quantize: %s already done (marker matches); nothing to do", dest)
        return QuantizeResult.model_validate(outputs)
    markers.invalidate(state_dir, STEP)
    result = _run(
        src=src,
        dest=dest,
        recipe_name=str(recipe),
        recipe=loaded_recipe,
        model_config=model_config,
        started=started,
    )
    markers.write_marker(state_dir, STEP, inputs, result.model_dump(mode="json"))
    return result


def _run(
    *,
    src: Path,
    dest: Path,
    recipe_name: str,
    recipe: recipes.Recipe,
    model_config: dict[str, Any],
    started: float,
) -> QuantizeResult:
    size = preflight.model_size(src, model_config)
    estimate = int(size.memory_bytes * recipe.info.bits / 16) + 64 * 1024 * 1024
    ensure_free_space(dest.parent, estimate, what=f"the {recipe.scheme} checkpoint")
    calib = recipe.calibration
    ram, ram_source = preflight.cpu_available_bytes()
    plan = preflight.plan_memory(
        size=size,
        ram_available=ram,
        ram_source=ram_source,
        gpu_free=preflight.gpu_free_bytes(),
        num_samples=calib.num_samples if (calib and recipe.needs_calibration) else 0,
        seq_len=calib.max_seq_length if calib else 0,
        gptq=recipe.modifier == "GPTQModifier",
    )
    if plan.device == "cpu":
        log.warning("no GPU found: quantizing on the CPU (slow; fine for small models and tests)")
    else:
        log.info(
            "GPU: %s free, one decoder layer needs ~%s; model stays in CPU RAM (%s)",
            human_bytes(plan.gpu_free or 0),
            human_bytes(plan.gpu_needed),
            human_bytes(size.memory_bytes),
        )
    held_out_count = recipe.quality.held_out_samples if recipe.quality.enabled else 0
    rows = calibration.load_rows(calib, held_out=held_out_count) if calib else None

    _remove_stale(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        quality, layers, calibration_seconds = _quantize_into(
            src=src, tmp=tmp, recipe=recipe, model_config=model_config, rows=rows, size=size
        )
        if quality is not None:
            atomic_write_text(tmp / QUALITY_FILE, quality.model_dump_json(indent=2) + "\n")
            if not quality.passed:
                raise QuantizeError(
                    f"quality gate failed for {src}: {'; '.join(quality.failures)}; "
                    "loosen recipe quality thresholds or change the scheme"
                )
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        output_bytes = _dir_bytes(tmp)
        _make_readable(tmp)
        _swap_into_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "quantized %s -> %s: %s -> %s (%s)",
        src,
        dest,
        human_bytes(size.disk_bytes),
        human_bytes(output_bytes),
        recipe.info.format,
    )
    return QuantizeResult(
        src=str(src),
        dest=str(dest),
        recipe=recipe_name,
        scheme=recipe.scheme,
        format=recipe.info.format,
        files=files,
        bytes=output_bytes,
        input_bytes=size.disk_bytes,
        device=plan.device,
        layers=layers,
        calibration_seconds=calibration_seconds,
        seconds=time.monotonic() - started,
        quality=quality,
    )


def _quantize_into(
    *,
    src: Path,
    tmp: Path,
    recipe: recipes.Recipe,
    model_config: dict[str, Any],
    rows: calibration.CalibrationRows | None,
    size: preflight.ModelSize,
) -> tuple[QualityReport | None, int, float]:
    """The heavy part: load, measure before, oneshot, save, reload, measure after."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.core import active_session
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steps import quality as quality_mod

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    calib_dataset = None
    if recipe.needs_calibration:
        assert rows is not None and recipe.calibration is not None  # recipe validation
        encoded = calibration.tokenize(
            rows.calibration, tokenizer, max_length=recipe.calibration.max_seq_length
        )
        if not encoded["input_ids"]:
            raise BadInputError(
                f"calibration dataset {rows.source}: every row tokenized to nothing; "
                "use a dataset with text in calibration.column"
            )
        calib_dataset = Dataset.from_dict(encoded)

    held_ids = None
    text_source = "built-in text"
    if recipe.quality.enabled:
        held_rows: list[Any] = rows.held_out if rows is not None else []
        if held_rows:
            text = "\n\n".join(calibration.render(row, tokenizer)[0] for row in held_rows)
            text_source = f"{len(held_rows)} held-out rows of {rows.source}"  # type: ignore[union-attr]
        else:
            text = BUILTIN_TEXT
        ids = tokenizer(text, truncation=True, max_length=recipe.quality.max_tokens)["input_ids"]
        if len(ids) >= 2:
            held_ids = torch.tensor([ids], dtype=torch.long)

    log.info("loading %s on the CPU (%s)", src, human_bytes(size.memory_bytes))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype="auto", device_map=None, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise QuantizeError(f"source {src}: transformers could not load it ({exc})") from exc
    model.eval()
    before = quality_mod.forward_logits(model, held_ids) if held_ids is not None else None

    ignore = recipe.ignore_for(model_config)
    modifier = _build_modifier(recipe, ignore)
    kwargs: dict[str, Any] = {"model": model, "processor": tokenizer, "recipe": modifier}
    if calib_dataset is not None and recipe.calibration is not None:
        kwargs.update(
            dataset=calib_dataset,
            num_calibration_samples=len(calib_dataset),
            max_seq_length=recipe.calibration.max_seq_length,
            shuffle_calibration_samples=False,
        )
    layers = len(_decoder_layers(model))
    log.info(
        "oneshot: %s via %s, ignore %s, %s",
        recipe.scheme,
        recipe.modifier,
        ignore,
        f"{len(calib_dataset)} calibration samples" if calib_dataset is not None else "data-free",
    )
    with Progress(
        f"quantize {recipe.scheme}",
        total_bytes=max(layers, 1) * size.largest_layer_bytes,
        total_items=max(layers, 1),
    ) as progress:
        tracker = _LayerProgress(model, progress, size.largest_layer_bytes)
        calibration_started = time.monotonic()
        ok = False
        try:
            oneshot(**kwargs)
            ok = True
        except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise QuantizeError(f"llmcompressor oneshot failed on {src}: {first}") from exc
        finally:
            tracker.close(ok=ok)
        calibration_seconds = time.monotonic() - calibration_started

    model.save_pretrained(tmp, save_compressed=True)  # also writes llmcompressor's recipe.yaml
    _copy_source_extras(src, tmp)
    # The session holds the model; release it so the reload below does not need twice the RAM
    # (141 GB + 141 GB for the 70B).
    active_session().reset()
    _drop_module_globals(model)
    released = weakref.ref(model)
    del model, kwargs, tracker
    gc.collect()
    if released() is not None:
        log.warning("the original model is still referenced; the quality reload doubles RAM use")

    if before is None or held_ids is None:
        return None, layers, calibration_seconds
    reloaded = quality_mod.reload_quantized(tmp, moe=recipes.is_moe(model_config))
    after = quality_mod.forward_logits(reloaded, held_ids)
    del reloaded
    gc.collect()
    weights_out = sum(path.stat().st_size for path in tmp.glob("*.safetensors"))
    report = quality_mod.compare(
        before=before,
        after=after,
        input_ids=held_ids,
        text_source=text_source,
        input_bytes=size.disk_bytes,
        output_bytes=weights_out,
        gates=recipe.quality,
    )
    log.info(
        "quality: NLL %.4f -> %.4f, relative logits error %.4f, top-1 agreement %.3f, size %.2fx",
        report.nll_before,
        report.nll_after,
        report.relative_logits_error,
        report.top1_agreement,
        report.size_ratio,
    )
    return report, layers, calibration_seconds


@click.command("quantize")
@click.option("--src", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option(
    "--recipe", default="nvfp4", show_default=True, help="Recipe name (config/recipes) or path."
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Marker dir.")
def command(src: Path, dest: Path, recipe: str, state_dir: Path | None) -> None:
    """Quantize a model with llmcompressor into a compressed-tensors checkpoint."""
    from steps.cli import run_step  # here, not at the top: steps.cli imports this module

    run_step(lambda: quantize(src=src, dest=dest, recipe=recipe, state_dir=state_dir))
