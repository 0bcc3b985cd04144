"""``python workflows/submit.py``: submit, register, bootstrap, or run a pipeline on this machine.

    python workflows/submit.py manager [--validate] [--resume] [--build-only] [--model ID]
        [--tag T] [--dry-run] [--local] [--wait] [--model-dir DIR] [--work DIR] [--target T]
    python workflows/submit.py executor ...        (NVFP4 quantize on a GPU node)
    python workflows/submit.py all ...             (every profile in config/models.yaml)
    python workflows/submit.py catalog [--apply]   (register the WorkflowTemplates)
    python workflows/submit.py bootstrap [--apply] [--out DIR]
    python workflows/submit.py status NAME [--wait]
    python workflows/submit.py retry NAME [--resubmit] [--yes] [--wait]
    python workflows/submit.py render [--write]    (regenerate workflows/golden/*.yaml)
    python workflows/submit.py demo-model DIR      (tiny offline model for --local --model-dir)

Cluster commands take ``--via argo|kube|auto`` and ``--namespace`` (``workflows/transport.py``):
``argo`` talks to the Argo Server (``ARGO_SERVER``, ``ARGO_TOKEN`` or ``oc whoami -t``), ``kube``
to the Kubernetes API with the kubeconfig's current context (``oc login``) or a pod's service
account; ``auto`` takes argo when ``ARGO_SERVER`` is set. ``ARGO_NAMESPACE`` / ``DS_PROJECT``,
``ECR_URI`` and ``ARGO_INSTANCEID`` are read through ``steps.settings``. Failures print one line
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
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import click  # noqa: E402
import yaml  # noqa: E402

from steps import config, redact  # noqa: E402
from steps.cli import configure_logging  # noqa: E402
from steps.errors import BadInputError, ConfigError, RemoteError, SynesisError  # noqa: E402
from workflows import transport  # noqa: E402
from workflows.transport import TERMINAL, VIA_CHOICES, Transport  # noqa: E402

_F = TypeVar("_F", bound=Callable[..., Any])


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


def _dump_all(documents: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=100)


# -- cluster submission ------------------------------------------------------------------------


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


def _nodes(wf: Any) -> dict[str, Any]:
    return dict((wf.status.nodes if wf.status is not None else None) or {})


def _failed_nodes(wf: Any, name: str) -> list[str]:
    """``step: message`` of each failed pod (the root DAG only says which child failed)."""
    failed = [
        f"{node.display_name or node.name}: {node.message}"
        for node in _nodes(wf).values()
        if node.phase in ("Failed", "Error") and node.message and node.name != name
        and node.type in ("Pod", "Retry")
    ]  # fmt: skip
    return sorted(set(failed))


def summary(wf: Any, name: str) -> dict[str, Any]:
    """One JSON-able line for a workflow: phase, progress N/M, message, failed nodes, outputs."""
    status = wf.status
    found: dict[str, Any] = {
        "workflow": name,
        "phase": (status.phase if status is not None else None) or "Pending",
    }
    if status is not None and status.progress:
        found["progress"] = status.progress
    if status is not None and status.message:
        found["message"] = status.message
    failed = _failed_nodes(wf, name)
    if failed:
        found["failed"] = failed
    for node in _nodes(wf).values():
        if node.name == name and node.outputs and node.outputs.parameters:
            found.update({p.name: p.value for p in node.outputs.parameters})
    return found


def _report_changes(wf: Any, name: str, seen: dict[str, str]) -> None:
    """Print (stderr) the workflow's phase/progress and each step's, when they changed."""
    info = summary(wf, name)
    line = f"{name}: {info['phase']}" + (f" {info['progress']}" if "progress" in info else "")
    if seen.get("") != line:
        seen[""] = line
        click.echo(line, err=True)
    nodes = _nodes(wf)
    for node_id, node in sorted(nodes.items(), key=lambda kv: str(kv[1].started_at or "")):
        if node.type not in ("Pod", "Skipped", "Retry"):
            continue
        node_line = _node_line(node)
        if seen.get(node_id) != node_line:
            seen[node_id] = node_line
            click.echo(node_line, err=True)


def _outcome(wf: Any, name: str) -> int:
    """Print the final line: the outputs JSON (0), or ``error: ...`` with the failed step (1)."""
    info = summary(wf, name)
    phase = info["phase"]
    if phase == "Succeeded":
        click.echo(json.dumps({k: v for k, v in info.items() if k not in ("message", "failed")}))
        return 0
    if phase not in TERMINAL:
        click.echo(json.dumps(info))
        return 0
    message = info.get("message") or "see the workflow's nodes"
    failed = "; ".join(info.get("failed", []))
    click.echo(
        f"error: workflow {name} {phase}: {message}" + (f" ({failed})" if failed else ""), err=True
    )
    return 1


def follow(client: Transport, name: str) -> int:
    """Print phase, progress and step changes until the workflow ends; 0 if it Succeeded, else 1.

    The transport decides how to follow (the Argo Server is polled, the Kubernetes API watched).
    """
    seen: dict[str, str] = {}
    last = None
    for wf in client.watch(name):
        _report_changes(wf, name, seen)
        last = wf
    if last is None:
        raise RemoteError(f"workflow {name}: no state received")
    return _outcome(last, name)


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
    via: str = "auto",
    namespace: str | None = None,
) -> None:
    from workflows import catalog
    from workflows.pipelines import ALL_NAME, TEMPLATE_NAMES, instance_labels

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

    def chosen_templates(cfg: config.ClusterConfig) -> list[Any]:
        found = catalog.templates(cfg)
        return found if pipeline == "all" else [t for t in found if t.name == template_name]

    if dry_run:
        cfg = transport.with_namespace(cfg, namespace)
        documents = [t.to_dict() for t in chosen_templates(cfg)]
        documents.append(
            transport.workflow_document(
                template_name, cfg.namespace, parameters, instance_labels(cfg)
            )
        )
        click.echo(_dump_all(documents), nl=False)
        return
    _require_registry(cfg)
    client, cfg = transport.connect(via, cfg, namespace=namespace)
    for template in chosen_templates(cfg):
        action = client.create_or_update_template(template)
        click.echo(f"{action} WorkflowTemplate {template.name}", err=True)
    name = client.submit_from_template(template_name, parameters, instance_labels(cfg))
    click.echo(f"submitted {name}")
    click.echo(client.workflow_url(name))
    if wait:
        sys.exit(follow(client, name))


def resubmit_workflow(client: Transport, wf: Any, cfg: config.ClusterConfig) -> str:
    """A new Workflow from ``wf``'s template and parameters with ``resume=true``: finished
    steps are skipped by their markers, so this is a retry where retry-in-place is impossible.
    A workflow still running is refused (two runs would share one PVC).
    """
    from workflows.pipelines import instance_labels

    name = str(wf.metadata.name)
    phase = wf.status.phase if wf.status is not None else None
    if phase not in TERMINAL:
        raise BadInputError(
            f"workflow {name} is still {phase or 'Pending'}; wait for it to end (status {name} "
            "--wait) before resubmitting"
        )
    ref = wf.spec.workflow_template_ref if wf.spec is not None else None
    if ref is None or not ref.name:
        raise BadInputError(
            f"workflow {name} was not created from a WorkflowTemplate; rerun the command that "
            "created it (for the image build: bootstrap --apply)"
        )
    arguments = wf.spec.arguments if wf.spec is not None else None
    parameters = {
        p.name: "" if p.value is None else str(p.value)
        for p in ((arguments.parameters if arguments is not None else None) or [])
    }
    parameters["resume"] = "true"
    return client.submit_from_template(ref.name, parameters, instance_labels(cfg))


# -- click commands ----------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (secrets stay masked).")
def cli(verbose: bool) -> None:
    """Synesis Pipelines: Hugging Face model -> KServe ModelCar image, on Argo or locally."""
    configure_logging(verbose)


def _transport_options(fn: _F) -> _F:
    """``--via`` and ``--namespace``: how to reach the cluster, and where to work in it."""
    fn = click.option(
        "-n",
        "--namespace",
        default=None,
        help="Namespace / OpenShift project (default: ARGO_NAMESPACE, DS_PROJECT, the kube "
        "context's namespace, then config).",
    )(fn)
    return click.option(
        "--via",
        type=click.Choice(VIA_CHOICES),
        default="auto",
        show_default=True,
        help="argo: the Argo Server (ARGO_SERVER); kube: the Kubernetes API (kubeconfig / "
        "oc login, or in-cluster); auto: argo when ARGO_SERVER is set, else kube.",
    )(fn)


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
    return _transport_options(fn)


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
        via=opts["via"],
        namespace=opts["namespace"],
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
@click.option("--apply", "apply_", is_flag=True, help="Create or update them on the cluster.")
@_transport_options
@_one_line_errors
def catalog(apply_: bool, via: str, namespace: str | None) -> None:
    """Register the WorkflowTemplates so the Argo UI (or `submit.py`) can submit and retry them."""
    from workflows import catalog as catalog_module

    cfg = config.load_cluster()
    if not apply_:
        cfg = transport.with_namespace(cfg, namespace)
        click.echo(_dump_all([t.to_dict() for t in catalog_module.templates(cfg)]), nl=False)
        return
    client, cfg = transport.connect(via, cfg, namespace=namespace)
    for template in catalog_module.templates(cfg):
        action = client.create_or_update_template(template)
        click.echo(f"{action} WorkflowTemplate {template.name}")
    click.echo(client.templates_url())


@cli.command()
@click.option(
    "--apply",
    "apply_",
    is_flag=True,
    help="Apply the manifests (kube: through the API; argo: oc/kubectl), then submit the build.",
)
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
@_transport_options
@_one_line_errors
def bootstrap(
    apply_: bool,
    out: Path,
    role_arn: str | None,
    git_repo: str | None,
    git_revision: str,
    image_tag: str,
    via: str,
    namespace: str | None,
) -> None:
    """PVCs, ServiceAccount/RBAC and Hub-secret manifests; an in-cluster buildah image build."""
    from workflows import bootstrap as bootstrap_module

    cfg = transport.with_namespace(config.load_cluster(), namespace)
    client: Transport | None = None
    if apply_:
        client, cfg = transport.connect(via, cfg, namespace=namespace)
    written = bootstrap_module.write_manifests(cfg, out, role_arn=role_arn)
    for path in written:
        click.echo(f"wrote {path}")
    build = bootstrap_module.image_build_workflow(
        cfg, git_repo=git_repo, git_revision=git_revision, image_tag=image_tag
    )
    build_path = out / "image-build.yaml"
    build_path.write_text(_dump_all([build.to_dict()]))
    click.echo(f"wrote {build_path}")
    if client is None:
        click.echo(
            f"next: fill {out}/hf-hub-secret.yaml, `oc apply -f {out}/`, then rerun with --apply",
            err=True,
        )
        return
    for path in client.apply_manifests(written):
        click.echo(f"applied {path}", err=True)
    _require_registry(cfg)
    name = client.create_workflow(build)
    click.echo(f"submitted {name}")
    click.echo(client.workflow_url(name))


@cli.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="Follow it until it ends; exit 1 if it fails.")
@_transport_options
@_one_line_errors
def status(name: str, wait: bool, via: str, namespace: str | None) -> None:
    """Phase, progress N/M, failed step and outputs of workflow NAME (exit 1 if it failed)."""
    client, _ = transport.connect(via, config.load_cluster(), namespace=namespace)
    if wait:
        sys.exit(follow(client, name))
    wf = client.get_workflow(name)
    _report_changes(wf, name, {})
    sys.exit(_outcome(wf, name))


@cli.command()
@click.argument("name")
@click.option(
    "--resubmit",
    is_flag=True,
    help="Submit a new workflow from the same template and parameters with resume=true "
    "(what kube offers, since only the Argo Server retries in place).",
)
@click.option("-y", "--yes", is_flag=True, help="Answer yes to the resubmit question.")
@click.option("--wait", is_flag=True, help="Follow it until it ends; exit 1 if it fails.")
@_transport_options
@_one_line_errors
def retry(
    name: str, resubmit: bool, yes: bool, wait: bool, via: str, namespace: str | None
) -> None:
    """Retry failed workflow NAME: in place on the Argo Server, else a --resume resubmit."""
    client, cfg = transport.connect(via, config.load_cluster(), namespace=namespace)
    if resubmit or not client.can_retry:
        wf = client.get_workflow(name)  # a wrong name fails here, before any question
        if not resubmit:
            click.echo(
                f"retry of {name} needs the Argo Server (`argo retry` or the Argo UI); the "
                "Kubernetes API can only resubmit it: a new workflow from the same template and "
                "parameters with resume=true, which skips the steps already done.",
                err=True,
            )
            interactive = sys.stdin.isatty()
            if not yes and not (interactive and click.confirm("Resubmit now?", default=True)):
                raise RemoteError(
                    f"workflow {name} not retried; rerun with --resubmit (or --yes) to resubmit "
                    "it with resume=true, or retry it from the Argo UI"
                )
        target = resubmit_workflow(client, wf, cfg)
        click.echo(f"resubmitted {name} as {target}")
    else:
        target = client.retry(name)
        click.echo(f"retried {target}")
    click.echo(client.workflow_url(target))
    if wait:
        sys.exit(follow(client, target))


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
    from steps.cli import run_cli

    run_cli(cli, argv, "python workflows/submit.py")


if __name__ == "__main__":
    main()
