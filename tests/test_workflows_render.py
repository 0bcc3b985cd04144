"""The rendered WorkflowTemplates: golden diff, strict schema validation and semantic checks.

No Kubernetes or Argo can run here, so the documents are checked offline: against Hera's
generated Argo models with unknown keys forbidden (in a subprocess, because forbidding mutates
Hera's classes), and by walking them for the mistakes that only show up on a cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflows import render

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "workflows" / "golden"
PIPELINE_FILES = ("synesis-manager.yaml", "synesis-executor.yaml")
TASK_REF = re.compile(r"\{\{tasks\.([\w-]+)\.outputs\.parameters\.([\w-]+)\}\}")
WORKFLOW_REF = re.compile(r"\{\{workflow\.parameters\.([\w-]+)\}\}")
INPUT_REF = re.compile(r"\{\{inputs\.parameters\.([\w-]+)\}\}")
STEP_TEMPLATES = {"download", "quantize", "build-stream", "build-buildah", "verify", "cleanup"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render.golden_documents()


def _doc(rendered: dict[str, str], name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(rendered[name])
    return doc


def _templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {tpl["name"]: tpl for tpl in doc["spec"]["templates"]}


def _dag(doc: dict[str, Any]) -> list[dict[str, Any]]:
    entry = _templates(doc)[doc["spec"]["entrypoint"]]
    tasks: list[dict[str, Any]] = entry["dag"]["tasks"]
    return tasks


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def test_golden_files_match_a_fresh_render(rendered: dict[str, str]) -> None:
    """Regenerate on purpose with `python workflows/submit.py render --write`."""
    assert sorted(rendered) == sorted(p.name for p in GOLDEN.glob("*.yaml"))
    for name, text in rendered.items():
        assert (GOLDEN / name).read_text() == text, f"{name} drifted; run render --write"


def test_golden_render_ignores_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECR_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/x")
    monkeypatch.setenv("SYNESIS_STEP_IMAGE", "example.com/other:1")
    again = render.golden_documents()
    assert all("example.com/other" not in text for text in again.values())
    assert all("dkr.ecr" not in text for text in again.values())


def test_every_document_validates_strictly_in_a_subprocess(tmp_path: Path) -> None:
    files = sorted(str(p) for p in GOLDEN.glob("*.yaml"))
    # The `all` fan-out's child manifest is a string inside the template: validate it too.
    all_doc = yaml.safe_load((GOLDEN / "synesis-all.yaml").read_text())
    manifest = _templates(all_doc)["run-pipeline"]["resource"]["manifest"]
    child = tmp_path / "child.yaml"
    child.write_text(manifest)
    files.append(str(child))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.hera_strict", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == len(files)


def test_strict_validation_catches_a_misspelt_key(tmp_path: Path) -> None:
    doc = yaml.safe_load((GOLDEN / "synesis-manager.yaml").read_text())
    doc["spec"]["templates"][0]["container"]["volumeMount"] = []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.hera_strict", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "volumeMount" in done.stdout and "Extra inputs" in done.stdout


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_every_mount_has_a_volume(rendered: dict[str, str], name: str) -> None:
    doc = _doc(rendered, name)
    workflow_volumes = {v["name"] for v in doc["spec"].get("volumes", [])}
    for tpl in doc["spec"]["templates"]:
        if "container" not in tpl:
            continue
        volumes = workflow_volumes | {v["name"] for v in tpl.get("volumes", [])}
        for mount in tpl["container"].get("volumeMounts", []):
            assert mount["name"] in volumes, f"{tpl['name']} mounts unknown {mount['name']}"
        assert any(mnt["mountPath"] == "/work" for mnt in tpl["container"]["volumeMounts"])


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_every_when_names_a_real_task_output(rendered: dict[str, str], name: str) -> None:
    doc = _doc(rendered, name)
    templates = _templates(doc)
    tasks = {task["name"]: task for task in _dag(doc)}
    params = {p["name"] for p in doc["spec"]["arguments"]["parameters"]}
    for task in tasks.values():
        if task["template"] in STEP_TEMPLATES:
            assert "when" in task, f"step task {task['name']} has no when"
        for text in _strings(task):
            for ref_task, output in TASK_REF.findall(text):
                assert ref_task in tasks, f"{task['name']} refers to unknown task {ref_task}"
                outputs = templates[tasks[ref_task]["template"]]["outputs"]["parameters"]
                assert output in {o["name"] for o in outputs}, f"{ref_task} has no {output}"
            for param in WORKFLOW_REF.findall(text):
                assert param in params, f"{task['name']} uses unknown parameter {param}"
    for task in tasks.values():
        for dep in re.findall(r"[\w-]+", task.get("depends", "")):
            assert dep in tasks, f"{task['name']} depends on unknown {dep}"


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_no_task_reads_outputs_of_a_task_that_may_be_skipped(
    rendered: dict[str, str], name: str
) -> None:
    """Argo cannot resolve outputs of Skipped tasks (argo-workflows#1807, #15837)."""
    doc = _doc(rendered, name)
    tasks = {task["name"]: task for task in _dag(doc)}
    may_skip = {n for n, task in tasks.items() if "when" in task}
    for task in tasks.values():
        for ref_task, _ in TASK_REF.findall(" ".join(_strings(task))):
            assert ref_task not in may_skip, f"{task['name']} reads skippable {ref_task}"
    entry = _templates(doc)[doc["spec"]["entrypoint"]]
    for ref_task, _ in TASK_REF.findall(" ".join(_strings(entry["outputs"]))):
        assert ref_task not in may_skip


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_inputs_are_declared_and_supplied(rendered: dict[str, str], name: str) -> None:
    doc = _doc(rendered, name)
    templates = _templates(doc)
    for tpl in templates.values():
        declared = {p["name"] for p in tpl.get("inputs", {}).get("parameters", [])}
        body = {k: v for k, v in tpl.items() if k != "dag"}
        for used in INPUT_REF.findall(" ".join(_strings(body))):
            assert used in declared, f"{tpl['name']} uses undeclared input {used}"
    for task in _dag(doc):
        declared = {p["name"] for p in templates[task["template"]]["inputs"]["parameters"]}
        given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
        assert given == declared, f"task {task['name']}: {given ^ declared}"


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_gpu_only_on_quantize(rendered: dict[str, str], name: str) -> None:
    doc = _doc(rendered, name)
    for tpl in doc["spec"]["templates"]:
        text = yaml.safe_dump(tpl)
        if tpl["name"] == "quantize":
            resources = tpl["container"]["resources"]
            assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
            assert tpl["nodeSelector"] and tpl["tolerations"]
            assert tpl["container"]["image"].endswith("quantize:0.1.0")
        else:
            assert "nvidia.com/gpu" not in text and "tolerations" not in text
    assert ("quantize" in _templates(doc)) == (name == "synesis-executor.yaml")


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_step_templates_retry_transient_failures_but_not_bad_input(
    rendered: dict[str, str], name: str
) -> None:
    for tpl in _doc(rendered, name)["spec"]["templates"]:
        if tpl["name"] in STEP_TEMPLATES:
            retry = tpl["retryStrategy"]
            assert retry["limit"] == 3 and retry["backoff"]["factor"] == 2
            assert retry["expression"] == "asInt(lastRetry.exitCode) != 2"
            env = {e["name"]: e for e in tpl["container"]["env"]}
            assert env["SYNESIS_OUTPUTS_DIR"]["value"] == "/tmp/outputs"
            assert tpl["container"]["command"][:3] == ["python", "-m", "steps"]


@pytest.mark.parametrize("name", PIPELINE_FILES)
def test_buildah_storage_only_on_the_buildah_template(rendered: dict[str, str], name: str) -> None:
    templates = _templates(_doc(rendered, name))
    buildah = templates["build-buildah"]
    assert [v["name"] for v in buildah["volumes"]] == ["buildah-storage"]
    assert buildah["container"]["securityContext"]["capabilities"]["add"] == ["SETFCAP"]
    assert "buildah" in buildah["container"]["args"]
    for other in set(templates) - {"build-buildah"}:
        assert "volumes" not in templates[other]
    tasks = {task["name"]: task for task in _dag(_doc(rendered, name))}
    assert "== 'buildah'" in tasks["build-buildah"]["when"]
    assert "== 'stream'" in tasks["build-stream"]["when"]


def test_hub_token_comes_only_from_the_optional_secret(rendered: dict[str, str]) -> None:
    for name in PIPELINE_FILES:
        templates = _templates(_doc(rendered, name))
        env = {e["name"]: e for e in templates["download"]["container"]["env"]}
        ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "hf-hub-secret", "key": "token", "optional": True}
        assert "value" not in env["HF_TOKEN"]
        assert _doc(rendered, name)["spec"]["serviceAccountName"] == "synesis-pipelines"


def test_executor_orders_quantize_between_download_and_build(rendered: dict[str, str]) -> None:
    tasks = {t["name"]: t for t in _dag(_doc(rendered, "synesis-executor.yaml"))}
    assert tasks["quantize"]["depends"] == "download"
    assert tasks["source-info"]["depends"] == "quantize"
    assert tasks["build-stream"]["arguments"]["parameters"][0]["value"].endswith("build_src}}")
    manager = {t["name"]: t for t in _dag(_doc(rendered, "synesis-manager.yaml"))}
    assert manager["source-info"]["depends"] == "download"


def test_all_fans_out_every_profile_with_the_parallelism_limit(rendered: dict[str, str]) -> None:
    from steps import config

    doc = _doc(rendered, "synesis-all.yaml")
    profiles = config.load_model_profiles().profiles
    assert {task["name"] for task in _dag(doc)} == set(profiles)
    assert doc["spec"]["parallelism"] == config.load_cluster().argo.parallelism
    run = _templates(doc)["run-pipeline"]["resource"]
    assert run["successCondition"] == "status.phase == Succeeded"
    child = yaml.safe_load(run["manifest"])
    assert child["spec"]["workflowTemplateRef"]["name"] == "{{inputs.parameters.template}}"
