"""``python workflows/submit.py``: submit, register, bootstrap, or run a pipeline on this machine.

    python workflows/submit.py manager [--validate] [--resume] [--build-only] [--model ID]
        [--tag T] [--dry-run] [--local] [--wait] [--model-dir DIR] [--work DIR] [--target T]
    python workflows/submit.py executor ...        (NVFP4 quantize on a GPU node)
    python workflows/submit.py all ...             (every profile in config/models.yaml)
    python workflows/submit.py catalog [--apply]   (register the WorkflowTemplates)
    python workflows/submit.py bootstrap [--apply] [--out DIR]
    python workflows/submit.py render [--write]    (regenerate workflows/golden/*.yaml)
    python workflows/submit.py demo-model DIR      (tiny offline model for --local --model-dir)

Cluster submits read ``ARGO_SERVER``, ``ARGO_TOKEN`` (or ``oc whoami -t``), ``ARGO_NAMESPACE`` /
``DS_PROJECT`` and ``ECR_URI`` (all through ``steps.settings``). Failures print one line
``error: ...`` and exit 2 (bad input) or 1 (remote failure), like the steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable, not workflows/
    _ROOT = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [
        _ROOT,
        *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent),
    ]

import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import click  # noqa: E402
import yaml  # noqa: E402

from steps import config, redact, settings  # noqa: E402
from steps.cli import configure_logging  # noqa: E402
from steps.errors import BadInputError, ConfigError, SynesisError  # noqa: E402

_F = TypeVar("_F", bound=Callable[..., Any])
TERMINAL = {"Succeeded", "Failed", "Error"}


def _one_line_errors(fn: _F) -> _F:
    """Map SynesisErrors to ``error: ...`` and the exit code; no traceback for expected failures."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SynesisError as exc:
            click.echo(f"error: {redact.redact(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; run the same command with --resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class RunSpec:
    """What one pipeline run builds, from a model profile plus command-line overrides."""

    pipeline: str
    profile: str
    model_id: str
    revision: str
    tag: str
    pvc: str
    recipe: str

    def parameters(self, *, registry: str, builder: str, resume: bool, build_only: bool) -> dict:
        return {
            "model": self.model_id,
            "revision": self.revision,
            "tag": self.tag,
            "pvc": self.pvc,
            "registry": registry,
            "builder": builder,
            "recipe": self.recipe,
            "resume": "true" if resume else "false",
            "build-only": "true" if build_only else "false",
        }


def resolve_spec(
    pipeline: str,
    *,
    validate: bool,
    model_id: str | None,
    revision: str | None,
    tag: str | None,
    recipe: str | None,
    cfg: config.ClusterConfig,
    profiles: config.ModelProfiles,
) -> RunSpec:
    """The profile for ``pipeline`` (``<pipeline>-validate`` with --validate), overridden."""
    name = f"{pipeline}-validate" if validate else pipeline
    chosen = profiles.profiles.get(name)
    if chosen is None or chosen.pipeline != pipeline:
        candidates = [n for n, p in profiles.profiles.items() if p.pipeline == pipeline]
        if validate or not candidates:
            raise BadInputError(
                f"config/models.yaml has no profile {name!r} for --{'validate' if validate else ''}"
                f" {pipeline}; add one or drop the flag"
            )
        name, chosen = candidates[0], profiles.profiles[candidates[0]]
    spec = RunSpec(
        pipeline=pipeline,
        profile=name,
        model_id=model_id or chosen.model_id,
        revision=revision or chosen.revision,
        tag=tag or chosen.tag,
        pvc=cfg.pvcs[chosen.pvc].name,
        recipe=(recipe or chosen.recipe or "nvfp4") if pipeline == "executor" else "",
    )
    try:
        config.ModelProfile(
            pipeline=pipeline,  # type: ignore[arg-type]
            model_id=spec.model_id,
            revision=spec.revision,
            tag=spec.tag,
            pvc=chosen.pvc,
        )
    except ValueError as exc:
        raise BadInputError(
            f"--model {spec.model_id!r} / --tag {spec.tag!r}: expected org/name and an image "
            "tag of letters, digits, '.', '_' or '-'"
        ) from exc
    return spec


def _workflow_doc(template: str, namespace: str, parameters: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{template}-", "namespace": namespace},
        "spec": {
            "workflowTemplateRef": {"name": template},
            "arguments": {"parameters": [{"name": k, "value": v} for k, v in parameters.items()]},
        },
    }


def _dump_all(documents: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=100)


# -- cluster submission ------------------------------------------------------------------------


def _client(cfg: config.ClusterConfig) -> Any:
    from workflows.argo_client import ArgoClient

    return ArgoClient.connect(server=cfg.argo.server, namespace=cfg.namespace)


def _require_registry(cfg: config.ClusterConfig) -> str:
    if not cfg.registry.uri:
        raise ConfigError(
            "ECR_URI is not set; export ECR_URI=<account>.dkr.ecr.<region>.amazonaws.com/<repo> "
            "(or run with --local)"
        )
    return cfg.registry.uri


def _node_line(node: Any) -> str:
    progress = f" {node.progress}" if getattr(node, "progress", None) else ""
    return f"  {node.display_name or node.name}: {node.phase}{progress}"


def follow(client: Any, name: str, *, poll: float | None = None, out: Any = None) -> int:
    """Print node phase changes until the workflow ends; 0 when it Succeeded, else 1."""
    poll = settings.argo_poll_seconds() if poll is None else poll
    seen: dict[str, str] = {}
    while True:
        wf = client.get_workflow(name)
        status = wf.status
        nodes = (status.nodes if status is not None else None) or {}
        for node_id, node in sorted(nodes.items(), key=lambda kv: str(kv[1].started_at or "")):
            if node.type not in ("Pod", "Skipped", "Retry"):
                continue
            line = _node_line(node)
            if seen.get(node_id) != line:
                seen[node_id] = line
                click.echo(line, err=True)
        phase = status.phase if status is not None else None
        if phase in TERMINAL:
            if phase == "Succeeded":
                outputs = {}
                for node in nodes.values():
                    if node.name == name and node.outputs and node.outputs.parameters:
                        outputs = {p.name: p.value for p in node.outputs.parameters}
                click.echo(json.dumps({"workflow": name, "phase": phase, **outputs}))
                return 0
            message = status.message if status is not None and status.message else "see the UI"
            click.echo(f"error: workflow {name} {phase}: {message}", err=True)
            return 1
        time.sleep(poll)


def submit_cluster(
    specs: list[RunSpec] | None,
    *,
    pipeline: str,
    cfg: config.ClusterConfig,
    builder: str,
    resume: bool,
    build_only: bool,
    dry_run: bool,
    wait: bool,
) -> None:
    from workflows import catalog
    from workflows.pipelines import ALL_NAME, TEMPLATE_NAMES

    registry = cfg.registry.uri or ""
    if pipeline == "all":
        template_name = ALL_NAME
        parameters = {
            "registry": registry,
            "builder": builder,
            "resume": "true" if resume else "false",
        }
    else:
        assert specs
        template_name = TEMPLATE_NAMES[pipeline]
        parameters = specs[0].parameters(
            registry=registry, builder=builder, resume=resume, build_only=build_only
        )
    templates = catalog.templates(cfg)
    if pipeline != "all":
        templates = [t for t in templates if t.name == template_name]
    if dry_run:
        documents = [t.to_dict() for t in templates]
        documents.append(_workflow_doc(template_name, cfg.namespace, parameters))
        click.echo(_dump_all(documents), nl=False)
        return
    _require_registry(cfg)
    client = _client(cfg)
    for template in templates:
        action = client.create_or_update_template(template)
        click.echo(f"{action} WorkflowTemplate {template.name}", err=True)
    name = client.submit_from_template(template_name, parameters)
    click.echo(f"submitted {name}")
    click.echo(client.ui_url(name))
    if wait:
        sys.exit(follow(client, name))


# -- click commands ----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (secrets stay masked).")
def cli(verbose: bool) -> None:
    """Synesis Pipelines: Hugging Face model -> KServe ModelCar image, on Argo or locally."""
    configure_logging(verbose)


def _pipeline_options(fn: _F) -> _F:
    options = [
        click.option("--validate", is_flag=True, help="Use the <pipeline>-validate profile."),
        click.option("--resume", is_flag=True, help="Skip steps whose markers say done."),
        click.option("--build-only", is_flag=True, help="Only build+verify what is on disk."),
        click.option("--model", "model_id", default=None, help="Hub model id (org/name)."),
        click.option("--revision", default=None, help="Branch, tag or commit sha."),
        click.option("--tag", default=None, help="Image tag."),
        click.option("--recipe", default=None, help="Quantize recipe (executor)."),
        click.option(
            "--builder",
            type=click.Choice(["stream", "buildah"]),
            default=None,
            help="Image builder (default: config; stream for --local).",
        ),
        click.option("--dry-run", is_flag=True, help="Print the YAML instead of submitting."),
        click.option("--local", is_flag=True, help="Run the DAG on this machine, in-process."),
        click.option("--wait", is_flag=True, help="Follow the cluster run; exit 1 if it fails."),
        click.option(
            "--model-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="--local: package this model directory (no download).",
        ),
        click.option(
            "--work",
            type=click.Path(path_type=Path),
            default=Path("work"),
            show_default=True,
            help="--local: the work volume.",
        ),
        click.option(
            "--target",
            default=None,
            help="--local: oci:DIR[:TAG] (default oci:out/<tag>:<tag>) or REGISTRY/REPO[:TAG].",
        ),
        click.option("--keep", is_flag=True, help="--local: keep the model after verify."),
        click.option(
            "--base",
            default=None,
            help="--local: ModelCar base image (default: built-in busybox for oci: targets, "
            "else config images.modelcar_base).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_pipeline(pipeline: str, **opts: Any) -> None:
    cfg = config.load_cluster()
    profiles = config.load_model_profiles()
    if pipeline == "all":
        for flag in ("model_id", "revision", "tag", "model_dir", "recipe"):
            if opts[flag]:
                raise BadInputError(
                    f"all: --{flag.replace('_id', '').replace('_', '-')} applies to one "
                    "pipeline; use manager or executor, or edit config/models.yaml"
                )
        if opts["validate"] or opts["build_only"]:
            raise BadInputError("all: --validate/--build-only apply to manager or executor")
        names = list(profiles.profiles)
        specs = [
            resolve_spec(
                profiles.profiles[n].pipeline,
                validate=False,
                model_id=profiles.profiles[n].model_id,
                revision=profiles.profiles[n].revision,
                tag=profiles.profiles[n].tag,
                recipe=profiles.profiles[n].recipe,
                cfg=cfg,
                profiles=profiles,
            )
            for n in names
        ]
    else:
        specs = [
            resolve_spec(
                pipeline,
                validate=opts["validate"],
                model_id=opts["model_id"],
                revision=opts["revision"],
                tag=opts["tag"],
                recipe=opts["recipe"],
                cfg=cfg,
                profiles=profiles,
            )
        ]
    if opts["local"]:
        if opts["dry_run"] or opts["wait"]:
            raise BadInputError("--local runs now; drop --dry-run/--wait")
        from workflows import local

        for spec in specs:
            result = local.run_local(
                pipeline=spec.pipeline,
                model_id=spec.model_id,
                revision=spec.revision,
                tag=spec.tag,
                recipe=spec.recipe or None,
                work=opts["work"],
                model_dir=opts["model_dir"],
                target=opts["target"],
                builder=opts["builder"] or "stream",
                resume=opts["resume"],
                build_only=opts["build_only"],
                keep=opts["keep"],
                base=opts["base"],
            )
            click.echo(result.model_dump_json())
        return
    if opts["model_dir"] or opts["target"] or opts["base"]:
        raise BadInputError(
            "--model-dir/--target/--base are for --local; a cluster run downloads to the PVC "
            "and pushes to ECR_URI (base: config images.modelcar_base)"
        )
    submit_cluster(
        None if pipeline == "all" else specs,
        pipeline=pipeline,
        cfg=cfg,
        builder=opts["builder"] or cfg.build.builder,
        resume=opts["resume"],
        build_only=opts["build_only"],
        dry_run=opts["dry_run"],
        wait=opts["wait"],
    )


@cli.command()
@_pipeline_options
@_one_line_errors
def manager(**opts: Any) -> None:
    """download -> build -> verify -> cleanup (tag `manager`; --validate: 0.5B, minutes)."""
    _run_pipeline("manager", **opts)


@cli.command()
@_pipeline_options
@_one_line_errors
def executor(**opts: Any) -> None:
    """download -> NVFP4 quantize (GPU) -> build -> verify -> cleanup (tag `executor-nvfp4`)."""
    _run_pipeline("executor", **opts)


@cli.command(name="all")
@_pipeline_options
@_one_line_errors
def all_(**opts: Any) -> None:
    """Every profile in config/models.yaml, argo.parallelism at a time."""
    _run_pipeline("all", **opts)


@cli.command()
@click.option("--apply", "apply_", is_flag=True, help="Create or update them on the server.")
@_one_line_errors
def catalog(apply_: bool) -> None:
    """Register the WorkflowTemplates so the Argo UI can submit and retry them."""
    from workflows import catalog as catalog_module

    cfg = config.load_cluster()
    templates = catalog_module.templates(cfg)
    if not apply_:
        click.echo(_dump_all([t.to_dict() for t in templates]), nl=False)
        return
    client = _client(cfg)
    for template in templates:
        action = client.create_or_update_template(template)
        click.echo(f"{action} WorkflowTemplate {template.name}")
    click.echo(f"{client.server}workflow-templates/{cfg.namespace}")


@cli.command()
@click.option("--apply", "apply_", is_flag=True, help="oc/kubectl apply, then submit the build.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bootstrap"),
    show_default=True,
    help="Where the manifests are written.",
)
@click.option("--role-arn", default=None, help="IRSA role for ECR push (SA annotation).")
@click.option("--git-repo", default=None, help="Repository the image build clones.")
@click.option("--git-revision", default="main", show_default=True)
@click.option("--image-tag", default="0.1.0", show_default=True)
@_one_line_errors
def bootstrap(
    apply_: bool,
    out: Path,
    role_arn: str | None,
    git_repo: str | None,
    git_revision: str,
    image_tag: str,
) -> None:
    """PVCs, ServiceAccount/RBAC and Hub-secret manifests; an in-cluster buildah image build."""
    from workflows import bootstrap as bootstrap_module

    cfg = config.load_cluster()
    written = bootstrap_module.write_manifests(cfg, out, role_arn=role_arn)
    for path in written:
        click.echo(f"wrote {path}")
    build = bootstrap_module.image_build_workflow(
        cfg, git_repo=git_repo, git_revision=git_revision, image_tag=image_tag
    )
    build_path = out / "image-build.yaml"
    build_path.write_text(_dump_all([build.to_dict()]))
    click.echo(f"wrote {build_path}")
    if not apply_:
        click.echo(
            f"next: fill {out}/hf-hub-secret.yaml, `oc apply -f {out}/`, then rerun with --apply",
            err=True,
        )
        return
    bootstrap_module.apply_manifests(written)
    _require_registry(cfg)
    client = _client(cfg)
    name = client.create_workflow(build)
    click.echo(f"submitted {name}")
    click.echo(client.ui_url(name))


@cli.command()
@click.option("--write", is_flag=True, help="Rewrite workflows/golden/*.yaml.")
@_one_line_errors
def render(write: bool) -> None:
    """Print (or rewrite) the golden YAML of the catalog, from the shipped config."""
    from workflows import render as render_module

    if write:
        for path in render_module.write_golden():
            click.echo(f"wrote {path}")
        return
    for name, text in render_module.golden_documents().items():
        click.echo(f"# {name}\n---\n{text}", nl=False)


@cli.command(name="demo-model")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--layers", default=2, show_default=True)
@click.option("--hidden", default=64, show_default=True)
@_one_line_errors
def demo_model(dest: Path, layers: int, hidden: int) -> None:
    """Write a tiny random Llama-shaped model (stdlib only) for offline --local runs."""
    from workflows.demo_model import make_demo_model

    click.echo(make_demo_model(dest=dest, layers=layers, hidden=hidden).model_dump_json())


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="python workflows/submit.py")


if __name__ == "__main__":
    main()
