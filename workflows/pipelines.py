"""The manager/executor DAGs and the ``all`` fan-out, built from config by plain functions.

Shape of a pipeline DAG (the executor adds ``quantize`` after ``download``)::

    check-markers -> download -> source-info -> build-stream | build-buildah
                  -> image-info -> verify -> cleanup

``check-markers`` decides (``done``/``todo``/``off``) and every step task has a ``when`` on its
answer, so a resumed run shows finished steps as Skipped and no GPU pod is scheduled for a
finished quantize. No task reads outputs of a task that may be skipped (Argo cannot resolve
those; argo-workflows#1807, #15837): ``source-info`` and ``image-info`` run the same
check-markers template again after the steps that may have been skipped and re-emit what the
markers on the PVC say (commit sha; image digest and ``oci://`` reference). The DAG's own
outputs come from ``image-info``, so the final digest is there whether build ran or not.

The builder is a workflow parameter; the stream and buildah variants are two differently named
templates, each behind a ``when`` on it (only buildah gets the emptyDir and SETFCAP).
"""

from __future__ import annotations

import json
from typing import Any

from hera.workflows import DAG, Container, Parameter, Resource, Task, WorkflowTemplate
from hera.workflows import models as m

from steps import config
from steps.check_markers import PIPELINES
from steps.errors import ConfigError
from workflows import templates as t

ENTRYPOINT = "pipeline"
TEMPLATE_NAMES = {"manager": "synesis-manager", "executor": "synesis-executor"}
ALL_NAME = "synesis-all"
LABEL = "synesis.io/pipeline"
INSTANCE_ID_LABEL = "workflows.argoproj.io/controller-instanceid"


def instance_labels(cfg: config.ClusterConfig) -> dict[str, str]:
    """The controller instance id label when config sets one (``argo.controller_instance_id``).

    A workflow controller started with ``--instanceid`` (a namespaced one may be) only picks up
    Workflows carrying this label, so every Workflow and WorkflowTemplate we create gets it.
    """
    instance_id = cfg.argo.controller_instance_id
    return {INSTANCE_ID_LABEL: instance_id} if instance_id else {}


def _wp(name: str) -> str:
    return "{{workflow.parameters." + name + "}}"


def _cm(name: str, task: str = "check-markers") -> str:
    return "{{tasks." + task + ".outputs.parameters." + name + "}}"


def _todo(step: str) -> str:
    return f"'{_cm(step)}' == 'todo'"


def _default_profile(
    pipeline: str, profiles: config.ModelProfiles
) -> tuple[str, config.ModelProfile]:
    for name, profile in profiles.profiles.items():
        if profile.pipeline == pipeline:
            return name, profile
    raise ConfigError(f"config/models.yaml: no profile for pipeline {pipeline!r}; add one")


def _arguments(
    pipeline: str, cfg: config.ClusterConfig, profile: config.ModelProfile
) -> list[Parameter]:
    return [
        Parameter(name="model", value=profile.model_id, description="Hugging Face model id"),
        Parameter(name="revision", value=profile.revision, description="branch, tag or sha"),
        Parameter(name="tag", value=profile.tag, description="image tag to push"),
        Parameter(name="pvc", value=cfg.pvcs[profile.pvc].name, description="work PVC"),
        Parameter(
            name="registry",
            value=cfg.registry.uri or "",
            description="registry/repository (ECR_URI), without tag",
        ),
        Parameter(name="builder", value=cfg.build.builder, enum=["buildah", "stream"]),
        Parameter(
            name="recipe",
            value=profile.recipe or ("nvfp4" if pipeline == "executor" else ""),
            description="quantize recipe (executor)",
        ),
        Parameter(
            name="resume",
            value="true",
            enum=["true", "false"],
            description="skip steps whose markers say done",
        ),
        Parameter(
            name="build-only",
            value="false",
            enum=["true", "false"],
            description="only build and verify what is on the PVC",
        ),
    ]


def _check_args(pipeline: str) -> dict[str, str]:
    return {
        "pipeline": pipeline,
        "model": _wp("model"),
        "revision": _wp("revision"),
        "target": _wp("registry") + ":" + _wp("tag"),
        "recipe": _wp("recipe"),
        "resume": _wp("resume"),
        "build-only": _wp("build-only"),
    }


def _task(template: Container, **kwargs: Any) -> Task:
    """Call a template inside a DAG context: Hera returns the new Task (typed for mypy)."""
    task = template(**kwargs)
    assert isinstance(task, Task)
    return task


def _chain(*tasks: Task) -> None:
    """``a >> b >> c``: each task depends on the one before (plain names: Skipped counts)."""
    for before, after in zip(tasks, tasks[1:], strict=False):
        before >> after


def pipeline_template(pipeline: str, cfg: config.ClusterConfig) -> WorkflowTemplate:
    """The WorkflowTemplate of one pipeline (``manager`` or ``executor``)."""
    steps = PIPELINES[pipeline]
    _, profile = _default_profile(pipeline, config.load_model_profiles())
    with WorkflowTemplate(
        name=TEMPLATE_NAMES[pipeline],
        namespace=cfg.namespace,
        labels={LABEL: pipeline, **instance_labels(cfg)},
        entrypoint=ENTRYPOINT,
        service_account_name=cfg.service_account,
        arguments=_arguments(pipeline, cfg, profile),
        volumes=[
            m.Volume(
                name=t.WORK_VOLUME,
                persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(claim_name=_wp("pvc")),
            )
        ],  # fmt: skip
    ) as wt:
        check = t.check_markers(cfg)
        download = t.download(cfg)
        quantize = t.quantize(cfg) if "quantize" in steps else None
        build_stream = t.build_stream(cfg)
        build_buildah = t.build_buildah(cfg)
        verify = t.verify(cfg)
        cleanup = t.cleanup(cfg)
        outputs = [
            Parameter(
                name=name,
                value_from=m.ValueFrom(parameter=_cm(name, "image-info")),
            )
            for name in ("commit_sha", "digest", "reference")
        ]
        with DAG(name=ENTRYPOINT, outputs=outputs):
            cm = _task(check, name="check-markers", arguments=_check_args(pipeline))
            dl = _task(
                download,
                name="download",
                when=_todo("download"),
                arguments={
                    "model": _wp("model"),
                    "revision": _wp("revision"),
                    "dest": _cm("source"),
                    "state-dir": _cm("state_dir"),
                },
            )
            _chain(cm, dl)
            last = dl
            if quantize is not None:
                last = _task(
                    quantize,
                    name="quantize",
                    when=_todo("quantize"),
                    arguments={
                        "src": _cm("source"),
                        "dest": _cm("quantized"),
                        "recipe": _wp("recipe"),
                        "state-dir": _cm("state_dir"),
                    },
                )
                _chain(dl, last)
            source_info = _task(check, name="source-info", arguments=_check_args(pipeline))
            _chain(last, source_info)
            build_args = {
                "src": _cm("build_src"),
                "target": _wp("registry") + ":" + _wp("tag"),
                "model": _wp("model"),
                "revision": _cm("commit_sha", "source-info"),
                "quantization": _wp("recipe"),
                "state-dir": _cm("state_dir"),
            }
            builds = [
                _task(
                    template,
                    name=str(template.name),
                    when=f"{_todo('build')} && '{_wp('builder')}' == '{builder}'",
                    arguments=build_args,
                )
                for template, builder in ((build_stream, "stream"), (build_buildah, "buildah"))
            ]
            image_info = _task(check, name="image-info", arguments=_check_args(pipeline))
            for build_task in builds:
                _chain(source_info, build_task, image_info)
            verify_task = _task(
                verify,
                name="verify",
                when=_todo("verify"),
                arguments={
                    "reference": _cm("reference", "image-info"),
                    "src": _cm("build_src"),
                    "state-dir": _cm("state_dir"),
                },
            )
            cleanup_task = _task(
                cleanup,
                name="cleanup",
                when=_todo("cleanup"),
                arguments={
                    "model-dir": _cm("source"),
                    "build-src": _cm("build_src"),
                    "state-dir": _cm("state_dir"),
                },
            )
            _chain(image_info, verify_task, cleanup_task)
    return wt


_CHILD_MANIFEST = """\
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  generateName: "{{inputs.parameters.template}}-"
  labels:
    LABEL_KEY: all
spec:
  workflowTemplateRef:
    name: "{{inputs.parameters.template}}"
  arguments:
    parameters:
    - name: model
      value: "{{inputs.parameters.model}}"
    - name: revision
      value: "{{inputs.parameters.revision}}"
    - name: tag
      value: "{{inputs.parameters.tag}}"
    - name: pvc
      value: "{{inputs.parameters.pvc}}"
    - name: recipe
      value: "{{inputs.parameters.recipe}}"
    - name: registry
      value: "{{workflow.parameters.registry}}"
    - name: builder
      value: "{{workflow.parameters.builder}}"
    - name: resume
      value: "{{workflow.parameters.resume}}"
""".replace("LABEL_KEY", LABEL)


def _child_manifest(cfg: config.ClusterConfig) -> str:
    """The child Workflow manifest, with the instance id label when one is configured."""
    extra = "".join(
        f"    {key}: {json.dumps(value)}\n" for key, value in instance_labels(cfg).items()
    )
    return _CHILD_MANIFEST.replace(f"    {LABEL}: all\n", f"    {LABEL}: all\n{extra}")


def all_template(cfg: config.ClusterConfig, profiles: config.ModelProfiles) -> WorkflowTemplate:
    """``synesis-all``: one child workflow per model profile, ``argo.parallelism`` at a time.

    Children are Workflows from the pipeline templates (a resource template creates each and
    waits for it), so each keeps its own PVC parameter, outputs and UI page, and ``argo retry``
    works per model. Needs ``create``/``get`` on workflows for the service account (bootstrap).
    """
    with WorkflowTemplate(
        name=ALL_NAME,
        namespace=cfg.namespace,
        labels={LABEL: "all", **instance_labels(cfg)},
        entrypoint="all",
        service_account_name=cfg.service_account,
        parallelism=cfg.argo.parallelism,
        arguments=[
            Parameter(name="registry", value=cfg.registry.uri or ""),
            Parameter(name="builder", value=cfg.build.builder, enum=["buildah", "stream"]),
            Parameter(name="resume", value="true", enum=["true", "false"]),
        ],
    ) as wt:
        child = Resource(
            name="run-pipeline",
            action="create",
            set_owner_reference=True,
            manifest=_child_manifest(cfg),
            success_condition="status.phase == Succeeded",
            failure_condition="status.phase in (Failed, Error)",
            inputs=[
                Parameter(name=name)
                for name in ("template", "model", "revision", "tag", "pvc", "recipe")
            ],
        )
        with DAG(name="all", parallelism=cfg.argo.parallelism):
            for name, profile in profiles.profiles.items():
                child(
                    name=name,
                    arguments={
                        "template": TEMPLATE_NAMES[profile.pipeline],
                        "model": profile.model_id,
                        "revision": profile.revision,
                        "tag": profile.tag,
                        "pvc": cfg.pvcs[profile.pvc].name,
                        "recipe": profile.recipe or "",
                    },
                )
    return wt
