"""The buildah builder, with real buildah and skopeo against a loopback ``docker-registry``.

Every ``@pytest.mark.buildah`` test runs the real tools as root with ``--isolation chroot`` and
overlay storage under a temp dir (the fixtures skip them when buildah is not installed). The
model is a Hugging Face cache snapshot (symlinks into ``blobs/``) with a nested file, so staging
and ``COPY`` of nested paths are exercised on every build. Nothing is mocked.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from steps import buildah_builder as bb
from steps.build import build
from steps.errors import BadInputError, ConfigError, InsufficientSpaceError
from steps.layers import LayerPlan, PlannedFile, PlannedLayer, plan_layers
from steps.oci import LAYER_TAR, LAYER_TAR_GZIP, LAYER_TAR_ZSTD
from steps.verify import verify
from tests.support.registry import RegistryServer

REPO_ROOT = Path(__file__).resolve().parent.parent
HAVE_BUILDAH = shutil.which("buildah") is not None and shutil.which("skopeo") is not None
IS_ROOT = os.geteuid() == 0
needs_buildah = pytest.mark.skipif(
    not (HAVE_BUILDAH and IS_ROOT), reason="needs buildah + skopeo, run as root"
)
CAP = 2_500_000  # weights of 1.8 MB and 1.5 MB -> three layers; busybox (2 MB raw) fits
REVISION = "0123456789abcdef0123456789abcdef01234567"


# -- fixtures -------------------------------------------------------------------------------


def make_hub_snapshot(root: Path, *, seed: int = 1) -> Path:
    """A Hub cache repo: ``snapshots/<rev>/`` of relative symlinks into ``blobs/``."""
    repo = root / "models--org--tiny"
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / REVISION
    blobs.mkdir(parents=True)
    rng = __import__("random").Random(seed)
    contents = {
        "config.json": b'{"model_type": "llama"}\n',
        "inference/config.json": b'{"nested": true}\n',
        "tokenizer.json": json.dumps({"vocab": list(range(300))}).encode(),
        "model-00001-of-00002.safetensors": rng.randbytes(1_800_000),
        "model-00002-of-00002.safetensors": rng.randbytes(1_500_000),
    }
    for index, (rel, data) in enumerate(sorted(contents.items())):
        blob = blobs / f"{index:040x}"
        blob.write_bytes(data)
        blob.chmod(0o644)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def source_files(snapshot: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():
            found[path.relative_to(snapshot).as_posix()] = path.read_bytes()
    return found


def write_config(directory: Path, build_section: dict[str, Any]) -> Path:
    """A copy of config/ with the cluster ``build:`` section replaced."""
    shutil.copytree(REPO_ROOT / "config", directory)
    cluster_file = directory / "cluster.yaml"
    cluster = yaml.safe_load(cluster_file.read_text())
    cluster["build"] = {**cluster["build"], **build_section}
    cluster_file.write_text(yaml.safe_dump(cluster))
    return directory


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """``<work>/<slug>/source`` is a symlink-free path to the Hub snapshot, like the volume."""
    return tmp_path


@pytest.fixture
def snapshot(work: Path) -> Path:
    return make_hub_snapshot(work / "hub")


@pytest.fixture
def buildah_config(
    work: Path, monkeypatch: pytest.MonkeyPatch, isolated_auth: Path
) -> dict[str, Any]:
    """Point the steps at a config whose buildah scratch lives in the test's temp dir."""
    section: dict[str, Any] = {
        "builder": "buildah",
        "layer_format": "none",
        "storage_driver": "overlay",
        "scratch_dir": str(work / "scratch"),
    }
    config_dir = work / "config"
    write_config(config_dir, section)
    monkeypatch.setenv("SYNESIS_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("SYNESIS_NO_PROGRESS", "1")
    return section


def set_build(work: Path, **changes: Any) -> None:
    cluster_file = work / "config" / "cluster.yaml"
    cluster = yaml.safe_load(cluster_file.read_text())
    cluster["build"].update({k: (str(v) if isinstance(v, Path) else v) for k, v in changes.items()})
    cluster_file.write_text(yaml.safe_dump(cluster))


def run_build(
    snapshot: Path, registry: RegistryServer, base: str, repo: str, *, state: Path
) -> Any:
    return build(
        src=snapshot,
        target=f"{registry.host}/{repo}:v1",
        model_id="org/tiny",
        revision=REVISION,
        builder="buildah",
        state_dir=state,
        base=base,
        cap_bytes=CAP,
    )


def manifest_of(registry: RegistryServer, repo: str, digest: str) -> dict[str, Any]:
    data, _ = registry.client().get_manifest(repo, digest)
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def layer_members(registry: RegistryServer, repo: str, desc: dict[str, Any]) -> list[Any]:
    blob = registry.client().get_blob(repo, desc["digest"])
    mode = "r:gz" if desc["mediaType"] == LAYER_TAR_GZIP else "r:"
    out = []
    with tarfile.open(fileobj=io.BytesIO(blob), mode=mode) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            out.append((member, data))
    return out


def scratch_leftovers(scratch: Path) -> list[str]:
    """Files left under the scratch dir (empty role directories do not count)."""
    return sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*") if not p.is_dir())


def mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(prefix)]


# -- pure parts -----------------------------------------------------------------------------


def fake_plan(sizes: list[int], nested: bool = False) -> LayerPlan:
    layers = tuple(
        PlannedLayer(
            index=i,
            files=(
                PlannedFile(
                    rel_path=("sub/" if nested and i == 0 else "") + f"f{i}.safetensors",
                    source=Path(f"/nonexistent/f{i}"),
                    size=size,
                ),
            ),
            blob_size=size + 3072,
        )
        for i, size in enumerate(sizes)
    )
    return LayerPlan(layers=layers, cap_bytes=max(sizes) * 2, prefix="models")


def test_containerfile_one_copy_per_layer_labels_and_user() -> None:
    plan = fake_plan([10, 20, 30], nested=True)
    text = bb.containerfile(
        plan,
        base_image="127.0.0.1:5000/base@sha256:" + "a" * 64,
        labels={"z.key": 'quote " and $HOME', "a.key": "plain"},
    )
    lines = text.splitlines()
    assert lines[0] == "FROM 127.0.0.1:5000/base@sha256:" + "a" * 64
    copies = [line for line in lines if line.startswith("COPY")]
    # nested layer: modes come from the staged context; flat layers: --chmod
    assert copies == [
        "COPY layer-000/ /models/",
        "COPY --chmod=0644 layer-001/ /models/",
        "COPY --chmod=0644 layer-002/ /models/",
    ]
    assert text.index("a.key") < text.index("z.key")  # sorted: config digest is stable
    assert r'z.key="quote \" and \$HOME"' in text
    assert lines[-1] == "USER 1001"


def test_containerfile_rejects_a_label_with_a_line_break() -> None:
    with pytest.raises(BadInputError, match="line break"):
        bb.containerfile(fake_plan([1]), base_image="h.io/b:1", labels={"k": "a\nRUN rm -rf /"})


def test_vfs_is_refused_for_many_layers_and_grows_quadratically() -> None:
    three = fake_plan([1 << 30] * 3)
    with pytest.raises(ConfigError, match="vfs") as caught:
        bb.check_driver(three, "vfs")
    assert caught.value.exit_code == 2
    bb.check_driver(three, "overlay")  # overlay is fine
    ten = fake_plan([1 << 30] * 10)
    growth = (bb.storage_bytes(ten, "vfs") - bb.STORAGE_HEADROOM) / ten.total_blob_bytes
    assert growth > 5  # ~ (n + 1) / 2 + 1 for n equal layers
    assert bb.storage_bytes(ten, "overlay") <= 2.5 * ten.total_blob_bytes + bb.STORAGE_HEADROOM


def test_space_preflight_names_the_volume_and_the_fix(tmp_path: Path) -> None:
    plan = fake_plan([1 << 50])  # a petabyte layer: no test machine has that free
    layout = bb.scratch_layout(
        bb.BuildConfig(scratch_dir=tmp_path / "scratch"), work_area=tmp_path, key="k"
    )
    needs = bb.space_needs(
        plan, layout, driver="overlay", layer_format="none", staging_copies_bytes=0
    )
    assert {n.role for n in needs} == {"storage", "push temp files", "uncompressed oci layout"}
    with pytest.raises(InsufficientSpaceError) as caught:
        bb.check_space(needs, driver="overlay")
    message = str(caught.value)
    assert str(tmp_path) in message and "--builder stream" in message and "\n" not in message
    small = bb.space_needs(
        fake_plan([1024]), layout, driver="overlay", layer_format="gzip", staging_copies_bytes=0
    )
    bb.check_space(small, driver="overlay")


def test_staging_links_real_files_and_fixes_modes(tmp_path: Path) -> None:
    snapshot = make_hub_snapshot(tmp_path / "hub")
    blobs = snapshot.parent.parent / "blobs"
    nested_blob = (snapshot / "inference" / "config.json").resolve()
    nested_blob.chmod(0o600)  # a nested file the arbitrary UID could not read
    plan = plan_layers(snapshot, cap_bytes=CAP)
    assert len(plan.layers) == 3
    report = bb.stage_context(plan, tmp_path / "context")
    context = tmp_path / "context"
    for layer in plan.layers:
        for planned in layer.files:
            staged = context / bb.layer_dir_name(layer) / planned.rel_path
            assert not staged.is_symlink()
            assert staged.stat().st_mode & 0o777 == 0o644 or bb.is_flat(layer)
            assert staged.read_bytes() == planned.source.read_bytes()
    staged_nested = context / "layer-000" / "inference" / "config.json"
    assert staged_nested.stat().st_mode & 0o777 == 0o644
    assert staged_nested.stat().st_ino != nested_blob.stat().st_ino  # copied, not linked
    assert nested_blob.stat().st_mode & 0o777 == 0o600  # the source is never chmod-ed
    weight = context / "layer-001" / "model-00001-of-00002.safetensors"
    assert weight.stat().st_ino == (snapshot / weight.name).resolve().stat().st_ino
    assert (context / "layer-000" / "inference").stat().st_mode & 0o777 == 0o755
    assert report.copied == 1 and report.linked == 4
    assert all(p.parent == blobs for p in (f.source for f in plan.files))


def test_staging_gives_a_repeated_inode_its_own_copy(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.json").write_text("same")
    os.link(model / "a.json", model / "b.json")
    plan = plan_layers(model, cap_bytes=CAP)
    bb.stage_context(plan, tmp_path / "ctx")
    a = tmp_path / "ctx" / "layer-000" / "a.json"
    b = tmp_path / "ctx" / "layer-000" / "b.json"
    assert a.stat().st_ino != b.stat().st_ino  # else buildah writes a tar hard link entry


def test_capability_failure_is_one_line_naming_the_capability() -> None:
    message = bb.explain_probe_failure(
        "mount /x/overlay:/x/overlay, flags: 0x1000: operation not permitted", driver="overlay"
    )
    assert "\n" not in message and "overlay" in message and "--builder stream" in message
    userns = bb.explain_probe_failure(
        "cannot set up namespace using newuidmap: exit status 1", driver="overlay"
    )
    assert "CAP_SETFCAP" in userns and "/etc/subuid" in userns


# -- real buildah ---------------------------------------------------------------------------


@pytest.mark.buildah
@needs_buildah
def test_buildah_image_verifies_and_round_trips_every_file(
    snapshot: Path, work: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any
) -> None:
    result = run_build(snapshot, registry, busybox_base, "buildah/none", state=work / "s1")
    plan = plan_layers(snapshot, cap_bytes=CAP)
    manifest = manifest_of(registry, "buildah/none", result.digest)
    assert len(manifest["layers"]) == 1 + len(plan.layers)  # busybox base + one per planned
    assert result.base_layers == 1 and len(result.layers) == len(plan.layers) == 3
    assert {d["mediaType"] for d in manifest["layers"][1:]} == {LAYER_TAR}  # layer_format none
    assert result.reference == f"oci://{registry.host}/buildah/none@{result.digest}"

    checked = verify(reference=result.reference, deep=True, src=snapshot, cap_bytes=CAP)
    assert checked.digest == result.digest

    expected = source_files(snapshot)
    seen: dict[str, bytes] = {}
    for index, desc in enumerate(manifest["layers"][1:]):
        planned = {f"models/{f.rel_path}" for f in plan.layers[index].files}
        for member, data in layer_members(registry, "buildah/none", desc):
            assert member.uid == 0 and member.gid == 0 and member.mtime == 0
            if member.isdir():
                assert member.mode & 0o777 == 0o755, member.name
            else:
                assert member.isfile(), f"{member.name} is not a regular file"
                assert member.mode & 0o777 == 0o644, member.name
                assert member.name in planned  # the plan's grouping, kept
                seen[member.name.removeprefix("models/")] = data
    assert seen == expected  # every file, byte for byte, nested path included

    config = json.loads(registry.client().get_blob("buildah/none", manifest["config"]["digest"]))
    assert config["config"]["User"] == "1001"
    assert config["config"]["Labels"]["io.synesis.model.id"] == "org/tiny"
    assert manifest["annotations"]["io.synesis.model.revision"] == REVISION

    scratch = work / "scratch"
    assert scratch_leftovers(scratch) == []  # storage, context, temp, auth: all removed
    assert mounts_under(scratch) == []


@pytest.mark.buildah
@needs_buildah
@pytest.mark.parametrize("layer_format", ["none", "gzip"])
def test_rebuilding_the_same_input_gives_the_same_digest(
    snapshot: Path,
    work: Path,
    registry: RegistryServer,
    busybox_base: str,
    buildah_config: Any,
    layer_format: str,
) -> None:
    set_build(work, layer_format=layer_format)
    repo = f"buildah/again-{layer_format}"
    first = run_build(snapshot, registry, busybox_base, repo, state=work / "a")
    # A fresh copy of the model (new inodes and mtimes), a fresh state dir: a real rebuild.
    copy = make_hub_snapshot(work / "hub2")
    second = run_build(copy, registry, busybox_base, repo, state=work / "b")
    assert not second.skipped
    assert first.digest == second.digest
    media = {d["mediaType"] for d in manifest_of(registry, repo, first.digest)["layers"][1:]}
    assert media == {LAYER_TAR if layer_format == "none" else LAYER_TAR_GZIP}
    if layer_format == "gzip":
        verify(reference=first.reference, deep=True, src=snapshot, cap_bytes=CAP)


@pytest.mark.buildah
@needs_buildah
def test_zstd_layers(
    snapshot: Path, work: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any
) -> None:
    set_build(work, layer_format="zstd")
    result = run_build(snapshot, registry, busybox_base, "buildah/zstd", state=work / "z")
    layers = manifest_of(registry, "buildah/zstd", result.digest)["layers"]
    assert len(layers) == 4
    assert {d["mediaType"] for d in layers[1:]} == {LAYER_TAR_ZSTD}


@pytest.mark.buildah
@needs_buildah
def test_build_to_an_oci_layout(
    snapshot: Path, work: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any
) -> None:
    result = build(
        src=snapshot,
        target=f"oci:{work / 'layout'}:v1",
        model_id="org/tiny",
        revision=REVISION,
        builder="buildah",
        state_dir=work / "s",
        base=busybox_base,
        cap_bytes=CAP,
    )
    verify(reference=f"oci:{work / 'layout'}:v1", deep=True, src=snapshot, cap_bytes=CAP)
    assert result.reference == f"oci:{work / 'layout'}@{result.digest}"


def cli_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_AUTH", "AWS_"))}
    env.update(
        SYNESIS_CONFIG_DIR=str(work / "config"),
        SYNESIS_NO_PROGRESS="1",
        HOME=str(work / "home"),
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def cli_build(
    snapshot: Path, registry: RegistryServer, base: str, repo: str, state: Path
) -> list[str]:
    return [
        sys.executable, "-m", "steps", "build", "--builder", "buildah", "--src", str(snapshot),
        "--target", f"{registry.host}/{repo}:v1", "--model", "org/tiny", "--revision", REVISION,
        "--base", base, "--state-dir", str(state),
    ]  # fmt: skip


@pytest.mark.buildah
@needs_buildah
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_nothing_is_written_to_var_tmp_or_the_system_cache(
    snapshot: Path, work: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any
) -> None:
    """The CLI runs with /var/tmp read-only (private mount namespace): a temp file there fails."""
    cache = work / "blob-cache"
    set_build(work, blob_info_cache_dir=cache)
    empty = work / "empty"
    empty.mkdir()
    script = 'mount --bind -o ro "$0" /var/tmp && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(empty)]
    command += cli_build(snapshot, registry, busybox_base, "buildah/cli", work / "cli-state")
    done = subprocess.run(command, env=cli_env(work), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["digest"].startswith("sha256:")
    assert (cache / "blob-info-cache-v1.boltdb").exists()  # redirected, not /var/lib/containers
    assert scratch_leftovers(work / "scratch") == []


@pytest.mark.buildah
@needs_buildah
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_missing_capability_is_one_line_and_exit_1(
    snapshot: Path, work: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any
) -> None:
    """Drop CAP_SYS_ADMIN for the whole CLI process tree: overlay cannot be mounted."""
    command = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"]
    command += cli_build(snapshot, registry, busybox_base, "buildah/nocap", work / "nocap")
    done = subprocess.run(command, env=cli_env(work), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CAP_SYS_ADMIN" in errors[0] and "--builder stream" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (work / "nocap" / "build.json").exists()  # no marker on failure


@pytest.mark.buildah
@needs_buildah
def test_vfs_multi_layer_model_is_refused_before_any_build(
    snapshot: Path, work: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any
) -> None:
    set_build(work, storage_driver="vfs")
    with pytest.raises(ConfigError, match="vfs"):
        run_build(snapshot, registry, busybox_base, "buildah/vfs", state=work / "v")
    assert scratch_leftovers(work / "scratch") == []


@pytest.mark.buildah
@needs_buildah
def test_vfs_builds_a_small_model(
    tmp_path: Path, registry: RegistryServer, busybox_base: str, buildah_config: Any, work: Path
) -> None:
    set_build(work, storage_driver="vfs")
    model = tmp_path / "vfs-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(os.urandom(100_000))
    result = build(
        src=model,
        target=f"{registry.host}/buildah/vfs-small:v1",
        model_id="org/tiny",
        revision=REVISION,
        builder="buildah",
        state_dir=tmp_path / "vs",
        base=busybox_base,
        cap_bytes=CAP,
    )
    verify(reference=result.reference, deep=True, src=model, cap_bytes=CAP)


@pytest.mark.buildah
@needs_buildah
def test_ecr_token_path_pushes_and_never_logs_the_token(
    snapshot: Path,
    work: Path,
    registry: RegistryServer,
    ecr_registry: RegistryServer,
    busybox_base: str,
    buildah_config: Any,
    ecr_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Auth mode ``ecr``: boto3 -> moto token -> auth.json (0600, deleted) -> skopeo push."""
    from tests.support.registry import MOTO_ECR_PASSWORD

    caplog.set_level("DEBUG")
    result = build(
        src=snapshot,
        target=f"{ecr_registry.host}/buildah/ecr:v1",
        model_id="org/tiny",
        revision=REVISION,
        builder="buildah",
        state_dir=work / "e",
        base=busybox_base,
        cap_bytes=CAP,
        auth="ecr",
    )
    assert result.digest.startswith("sha256:")
    out, err = capfd.readouterr()
    assert MOTO_ECR_PASSWORD not in caplog.text + out + err
    assert scratch_leftovers(work / "scratch") == []  # the auth file is gone too
