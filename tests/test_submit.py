"""submit.py against a loopback Argo Server stand-in (tests/support/argo_server.py).

No Argo can run here; the stand-in speaks the REST endpoints Hera uses and records requests,
so these tests check what goes over the wire (bodies, Bearer token, resourceVersion, 409 retry)
and what the user sees (workflow name, UI URL, one-line errors and exit codes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from tests.support.argo_server import ARGO_TOKEN, TEST_ECR_URI, ArgoServer
from workflows import submit

REPO = Path(__file__).resolve().parent.parent
ECR = TEST_ECR_URI
TOKEN = ARGO_TOKEN


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ARGO_SERVER",
        "ARGO_TOKEN",
        "ARGO_NAMESPACE",
        "DS_PROJECT",
        "ECR_URI",
        "ARGO_SECURE",
        "SYNESIS_STEP_IMAGE",
        "SYNESIS_BUILDER",
        "ARGO_INSTANCEID",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")  # no kube fallback either
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no `oc` token fallback in these tests
    monkeypatch.setenv("SYNESIS_ARGO_POLL", "0.01")


def run(*args: str) -> Result:
    return CliRunner().invoke(submit.cli, list(args), catch_exceptions=False)


def _params(body: dict) -> dict[str, str]:
    pairs = body["submitOptions"]["parameters"]
    return dict(p.split("=", 1) for p in pairs)


def test_dry_run_prints_the_template_and_the_workflow_without_network() -> None:
    result = run("manager", "--dry-run", "--model", "org/tiny", "--tag", "t1", "--resume")
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in docs] == ["WorkflowTemplate", "Workflow"]
    params = {p["name"]: p["value"] for p in docs[1]["spec"]["arguments"]["parameters"]}
    assert params["model"] == "org/tiny" and params["tag"] == "t1"
    assert params["resume"] == "true" and params["pvc"] == "modelcar-build-pvc"
    assert docs[1]["spec"]["workflowTemplateRef"]["name"] == "synesis-manager"


def test_validate_picks_the_small_profile() -> None:
    result = run("manager", "--validate", "--dry-run")
    docs = list(yaml.safe_load_all(result.output))
    params = {p["name"]: p["value"] for p in docs[1]["spec"]["arguments"]["parameters"]}
    assert params["model"] == "Qwen/Qwen2.5-0.5B-Instruct" and params["tag"] == "manager-0.5b"


def test_submit_creates_the_template_then_submits_with_bearer_token(
    argo_cluster: ArgoServer,
) -> None:
    result = run("manager", "--model", "org/tiny", "--tag", "t1", "--builder", "stream")
    assert result.exit_code == 0, result.output
    state = argo_cluster.state
    assert [(r.method, r.path) for r in state.requests] == [
        ("GET", "/api/v1/workflow-templates/team-a/synesis-manager"),
        ("POST", "/api/v1/workflow-templates/team-a"),
        ("POST", "/api/v1/workflows/team-a/submit"),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in state.requests)
    created = state.requests[1].body["template"]
    assert created["metadata"]["namespace"] == "team-a"
    submitted = state.requests[2].body
    assert submitted["resourceKind"] == "WorkflowTemplate"
    assert submitted["resourceName"] == "synesis-manager"
    params = _params(submitted)
    assert params["registry"] == ECR and params["model"] == "org/tiny"
    assert params["builder"] == "stream" and params["resume"] == "false"
    (name,) = [n for (_, n) in state.workflows]
    assert f"submitted {name}" in result.output
    assert f"{argo_cluster.url}/workflows/team-a/{name}" in result.output
    assert TOKEN not in result.output


def test_catalog_apply_creates_then_updates_with_resource_version(
    argo_cluster: ArgoServer,
) -> None:
    first = run("catalog", "--apply")
    assert first.exit_code == 0, first.output
    assert first.output.count("created WorkflowTemplate") == 3
    versions = {
        k: v["metadata"]["resourceVersion"] for k, v in argo_cluster.state.templates.items()
    }
    second = run("catalog", "--apply")
    assert second.exit_code == 0, second.output
    assert second.output.count("updated WorkflowTemplate") == 3
    puts = argo_cluster.state.calls("PUT")
    assert len(puts) == 3
    for put in puts:
        name = put.path.rsplit("/", 1)[1]
        assert put.body["name"] == name
        sent = put.body["template"]["metadata"]["resourceVersion"]
        assert sent == versions[("team-a", name)]


def test_catalog_apply_retries_a_409_conflict(argo_cluster: ArgoServer) -> None:
    assert run("catalog", "--apply").exit_code == 0
    argo_cluster.state.put_conflicts = 1
    result = run("catalog", "--apply")
    assert result.exit_code == 0, result.output
    puts = argo_cluster.state.calls("PUT")
    assert len(puts) == 4  # one conflict, then three accepted updates
    assert puts[0].path == puts[1].path
    assert (
        puts[0].body["template"]["metadata"]["resourceVersion"]
        != (puts[1].body["template"]["metadata"]["resourceVersion"])
    )


def test_catalog_apply_gives_up_after_repeated_conflicts(argo_cluster: ArgoServer) -> None:
    assert run("catalog", "--apply").exit_code == 0
    argo_cluster.state.put_conflicts = 10
    result = run("catalog", "--apply")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "kept changing" in errors[0]
    assert result.output.strip().splitlines()[-1] == errors[0]


def test_wrong_token_is_one_line_exit_1_and_never_printed(
    argo_cluster: ArgoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_TOKEN", "wrong-token-abcdef123456")
    result = run("manager")
    assert result.exit_code == 1
    assert "refused the token" in result.output and "HTTP 401" in result.output
    assert "wrong-token-abcdef123456" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unreachable_server_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGO_SERVER", "http://127.0.0.1:9")
    monkeypatch.setenv("ECR_URI", ECR)
    result = run("executor")
    assert result.exit_code == 1
    assert result.output.startswith("error: Argo server http://127.0.0.1:9/ is unreachable")


def test_missing_ecr_uri_is_exit_2_before_any_request(
    argo_cluster: ArgoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECR_URI")
    result = run("manager")
    assert result.exit_code == 2
    assert result.output.startswith("error: ECR_URI is not set")
    assert argo_cluster.state.requests == []


def test_missing_argo_server_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECR_URI", ECR)
    result = run("manager")
    assert result.exit_code == 2 and "ARGO_SERVER is not set" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["builder"],
        ["executor", "--validate"],
        ["manager", "--model", "not a model id"],
        ["all", "--model", "org/x"],
        ["manager", "--model-dir", "/tmp"],
    ],
)
def test_bad_input_exits_2(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output


def test_wait_follows_progress_and_prints_outputs(argo_cluster: ArgoServer) -> None:
    node = {"name": "x.download", "displayName": "download", "type": "Pod"}
    argo_cluster.state.phases = [
        {
            "phase": "Running",
            "nodes": {"n1": {**node, "id": "n1", "phase": "Running", "progress": "1/3"}},
        },  # fmt: skip
        {
            "phase": "Succeeded",
            "nodes": {
                "n1": {**node, "id": "n1", "phase": "Succeeded", "progress": "3/3"},
                "root": {
                    "id": "root",
                    "name": "synesis-manager-00001",
                    "type": "DAG",
                    "phase": "Succeeded",
                    "outputs": {"parameters": [{"name": "digest", "value": "sha256:abc"}]},
                },
            },
        },
    ]
    result = run("manager", "--wait")
    assert result.exit_code == 0, result.output
    assert "download: Running 1/3" in result.output
    assert "download: Succeeded 3/3" in result.output
    assert '"digest": "sha256:abc"' in result.output


def test_wait_exits_1_when_the_workflow_fails(argo_cluster: ArgoServer) -> None:
    argo_cluster.state.phases = [{"phase": "Failed", "message": "child 'build' failed"}]
    result = run("manager", "--wait")
    assert result.exit_code == 1
    assert "Failed: child 'build' failed" in result.output


def test_all_registers_every_template_and_submits_the_fan_out(argo_cluster: ArgoServer) -> None:
    result = run("all", "--resume")
    assert result.exit_code == 0, result.output
    names = {name for (_, name) in argo_cluster.state.templates}
    assert names == {"synesis-manager", "synesis-executor", "synesis-all"}
    (submitted,) = argo_cluster.state.calls("POST", "/api/v1/workflows/team-a/submit")
    assert submitted.body["resourceName"] == "synesis-all"
    assert _params(submitted.body) == {"registry": ECR, "builder": "buildah", "resume": "true"}


def test_runs_as_a_script_from_another_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(REPO / "workflows" / "submit.py"), "manager", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "kind: Workflow" in done.stdout


# -- bootstrap ---------------------------------------------------------------------------------


def _bootstrap(out: Path, *extra: str) -> Result:
    return run(
        "bootstrap", "--out", str(out), "--git-repo", "https://git.example.com/synesis.git",
        "--role-arn", "arn:aws:iam::123456789012:role/synesis", *extra,
    )  # fmt: skip


def test_bootstrap_writes_valid_core_manifests_and_a_secret_template(tmp_path: Path) -> None:
    import kubernetes_validate

    result = _bootstrap(tmp_path)
    assert result.exit_code == 0, result.output
    kinds = []
    for name in ("pvcs.yaml", "rbac.yaml", "hf-hub-secret.yaml"):
        for doc in yaml.safe_load_all((tmp_path / name).read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["PersistentVolumeClaim"] * 2 + ["ServiceAccount", "Role", "RoleBinding", "Secret"]
    )
    pvcs = list(yaml.safe_load_all((tmp_path / "pvcs.yaml").read_text()))
    assert {p["metadata"]["name"]: p["spec"]["resources"]["requests"]["storage"] for p in pvcs} == {
        "modelcar-build-pvc": "400Gi",
        "executor-build-pvc": "150Gi",
    }
    sa = next(yaml.safe_load_all((tmp_path / "rbac.yaml").read_text()))
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/synesis"
    }
    secret = yaml.safe_load((tmp_path / "hf-hub-secret.yaml").read_text())
    assert secret["stringData"] == {"token": "REPLACE_WITH_YOUR_HF_TOKEN"}


def test_kubernetes_validate_rejects_a_misspelt_key() -> None:
    import kubernetes_validate

    bad = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "x"},
        "spec": {"accesModes": ["ReadWriteOnce"]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_bootstrap_image_build_workflow_validates_strictly(tmp_path: Path) -> None:
    assert _bootstrap(tmp_path).exit_code == 0
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.hera_strict", str(tmp_path / "image-build.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    doc = yaml.safe_load((tmp_path / "image-build.yaml").read_text())
    tasks = doc["spec"]["templates"][-1]["dag"]["tasks"]
    images = {t["name"]: t["arguments"]["parameters"][1]["value"] for t in tasks}
    assert set(images) == {"steps", "quantize"}
    assert all(v.endswith(":0.1.0") for v in images.values())


def test_bootstrap_apply_skips_the_placeholder_secret_and_submits_the_build(
    argo_cluster: ArgoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`oc` cannot run here: a stand-in script on PATH records what it was asked to apply."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "oc.log"
    fake = bin_dir / "oc"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("ARGO_TOKEN", TOKEN)  # not `oc whoami -t`
    out = tmp_path / "manifests"
    result = _bootstrap(out, "--apply")
    assert result.exit_code == 0, result.output
    applied = log.read_text().splitlines()
    assert applied == [f"apply -f {out / 'pvcs.yaml'}", f"apply -f {out / 'rbac.yaml'}"]
    (created,) = argo_cluster.state.calls("POST", "/api/v1/workflows/team-a")
    assert created.body["workflow"]["metadata"]["generateName"] == "synesis-image-build-"
    assert "submitted synesis-image-build-" in result.output

    secret = out / "hf-hub-secret.yaml"
    secret.write_text(secret.read_text().replace("REPLACE_WITH_YOUR_HF_TOKEN", "hf_realtoken123"))
    assert _bootstrap(out, "--apply").exit_code == 0
    assert f"apply -f {secret}" in log.read_text()
    assert "hf_realtoken123" in secret.read_text()  # a filled-in secret is never overwritten


def test_bootstrap_apply_without_oc_or_kubectl_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("ARGO_SERVER", "http://127.0.0.1:9")  # argo transport: oc applies
    result = _bootstrap(tmp_path / "m", "--apply")
    assert result.exit_code == 2 and "neither oc nor kubectl" in result.output
