"""submit.py's ``kube`` transport against a loopback Kubernetes API stand-in, and the commands
that both transports share (status, retry, auto selection).

No Kubernetes or Argo controller can run here: tests/support/kube_server.py speaks the API
paths the official client uses and records requests, and tests/support/argo_server.py stands in
for the Argo Server. The ``kubernetes`` client, its kubeconfig loading, token handling and watch
stream are the real ones; the tests check what goes over the wire (bodies, Bearer token,
resourceVersion, 409 retry, server-side apply) and what the user sees (lines, exit codes).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from steps import config
from steps.errors import ConfigError
from tests.support.argo_server import ARGO_TOKEN, TEST_ECR_URI, ArgoServer
from tests.support.kube_server import KubeServer
from workflows import kube_client, submit, transport

ECR = TEST_ECR_URI
TOKEN = "sha256~kube-token-0123456789abcdef"
INSTANCE = "workflows.argoproj.io/controller-instanceid"
WF_PATH = "/apis/argoproj.io/v1alpha1/namespaces/team-a/workflows"
WT_PATH = "/apis/argoproj.io/v1alpha1/namespaces/team-a/workflowtemplates"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "ARGO_SERVER",
        "ARGO_TOKEN",
        "ARGO_NAMESPACE",
        "DS_PROJECT",
        "ECR_URI",
        "ARGO_SECURE",
        "ARGO_INSTANCEID",
        "SYNESIS_STEP_IMAGE",
        "SYNESIS_BUILDER",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no `oc` anywhere
    monkeypatch.setenv("SYNESIS_ARGO_POLL", "0.01")
    monkeypatch.setenv("SYNESIS_KUBE_WATCH_SECONDS", "2")


@pytest.fixture
def kube(kube_server: KubeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> KubeServer:
    """The stand-in API server, a kubeconfig (token user, context namespace team-a) for it."""
    kube_server.state.token = TOKEN
    path = kube_server.write_kubeconfig(tmp_path / "kubeconfig", token=TOKEN)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setenv("ECR_URI", ECR)
    return kube_server


def run(*args: str) -> Result:
    return CliRunner().invoke(submit.cli, list(args), catch_exceptions=False)


def _errors(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def _params(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


def _pod(name: str, phase: str, **extra: Any) -> dict[str, Any]:
    return {"id": name, "name": f"x.{name}", "displayName": name, "type": "Pod", "phase": phase,
            **extra}  # fmt: skip


RUNNING = {"phase": "Running", "progress": "1/4", "nodes": {"d": _pod("download", "Running")}}
FAILED = {
    "phase": "Failed",
    "progress": "1/4",
    "message": "child 'download' failed",
    "nodes": {"d": _pod("download", "Failed", message="Error (exit code 1): gated repo, 401")},
}


def _succeeded(name: str) -> dict[str, Any]:
    root = {
        "id": "root",
        "name": name,
        "type": "DAG",
        "phase": "Succeeded",
        "outputs": {"parameters": [{"name": "digest", "value": "sha256:abc"}]},
    }
    nodes = {"d": _pod("download", "Succeeded"), "root": root}
    return {"phase": "Succeeded", "progress": "4/4", "nodes": nodes}


# -- catalog -----------------------------------------------------------------------------------


def test_catalog_apply_creates_templates_with_the_kubeconfig_token_and_instance_label(
    kube: KubeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_INSTANCEID", "dsp-team-a")
    result = run("catalog", "--apply", "--via", "kube")
    assert result.exit_code == 0, result.output
    assert result.output.count("created WorkflowTemplate") == 3
    assert f"{kube.url}{WT_PATH}" in result.output
    posts = kube.state.calls("POST", WT_PATH)
    assert len(posts) == 3
    for post in posts:
        assert post.body["kind"] == "WorkflowTemplate"
        assert post.body["metadata"]["namespace"] == "team-a"  # the context's namespace
        assert post.body["metadata"]["labels"][INSTANCE] == "dsp-team-a"
    all_template = next(p.body for p in posts if p.body["metadata"]["name"] == "synesis-all")
    child = all_template["spec"]["templates"][0]["resource"]["manifest"]
    assert yaml.safe_load(child)["metadata"]["labels"][INSTANCE] == "dsp-team-a"
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in kube.state.requests)
    assert TOKEN not in result.output


def test_catalog_apply_updates_with_the_resource_version_it_read(kube: KubeServer) -> None:
    assert run("catalog", "--apply", "--via", "kube").exit_code == 0
    stored = {p.rsplit("/", 1)[1]: o["metadata"]["resourceVersion"]
              for p, o in kube.state.of_kind("workflowtemplates").items()}  # fmt: skip
    result = run("catalog", "--apply", "--via", "kube")
    assert result.exit_code == 0, result.output
    assert result.output.count("updated WorkflowTemplate") == 3
    puts = kube.state.calls("PUT", WT_PATH)
    assert len(puts) == 3
    for put in puts:
        assert put.body["metadata"]["resourceVersion"] == stored[put.path.rsplit("/", 1)[1]]


def test_catalog_apply_retries_a_409_conflict_with_a_fresh_resource_version(
    kube: KubeServer,
) -> None:
    assert run("catalog", "--apply", "--via", "kube").exit_code == 0
    kube.state.put_conflicts = 1
    result = run("catalog", "--apply", "--via", "kube")
    assert result.exit_code == 0, result.output
    puts = kube.state.calls("PUT", WT_PATH)
    assert len(puts) == 4  # one conflict, then three accepted updates
    assert puts[0].path == puts[1].path
    assert (
        puts[0].body["metadata"]["resourceVersion"] != puts[1].body["metadata"]["resourceVersion"]
    )
    name = puts[1].path.rsplit("/", 1)[1]
    stored = kube.state.objects[f"{WT_PATH}/{name}"]
    assert int(stored["metadata"]["resourceVersion"]) > int(
        puts[1].body["metadata"]["resourceVersion"]
    )


def test_catalog_apply_gives_up_after_repeated_conflicts(kube: KubeServer) -> None:
    assert run("catalog", "--apply", "--via", "kube").exit_code == 0
    kube.state.put_conflicts = 10
    result = run("catalog", "--apply", "--via", "kube")
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert "kept changing" in error and result.output.strip().splitlines()[-1] == error


# -- submit and --wait -------------------------------------------------------------------------


def test_submit_creates_a_workflow_that_references_the_template(
    kube: KubeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_INSTANCEID", "dsp-team-a")
    result = run("manager", "--via", "kube", "--model", "org/tiny", "--tag", "t1", "--resume")
    assert result.exit_code == 0, result.output
    (post,) = kube.state.calls("POST", WF_PATH)
    body = post.body
    assert body["apiVersion"] == "argoproj.io/v1alpha1" and body["kind"] == "Workflow"
    assert body["metadata"]["generateName"] == "synesis-manager-"
    assert body["metadata"]["labels"] == {INSTANCE: "dsp-team-a"}
    assert body["spec"]["workflowTemplateRef"] == {"name": "synesis-manager"}
    params = _params(body)
    assert params["model"] == "org/tiny" and params["tag"] == "t1"
    assert params["registry"] == ECR and params["resume"] == "true"
    assert params["pvc"] == "modelcar-build-pvc" and params["build-only"] == "false"
    (name,) = [p.rsplit("/", 1)[1] for p in kube.state.of_kind("workflows")]
    assert f"submitted {name}" in result.output
    assert f"{kube.url}{WF_PATH}/{name}" in result.output
    assert TOKEN not in result.output


def test_submit_sends_the_same_parameters_as_the_argo_transport(
    kube: KubeServer, argo_cluster: ArgoServer
) -> None:
    """One submit logic, two transports: the Workflow the kube path creates carries exactly
    the parameters the Argo Server was asked to submit with."""
    assert run("executor", "--via", "argo", "--tag", "x1").exit_code == 0
    (submitted,) = argo_cluster.state.calls("POST", "/api/v1/workflows/team-a/submit")
    argo_params = dict(p.split("=", 1) for p in submitted.body["submitOptions"]["parameters"])
    result = run("executor", "--via", "kube", "--tag", "x1")
    assert result.exit_code == 0, result.output
    (post,) = kube.state.calls("POST", WF_PATH)
    assert _params(post.body) == argo_params
    assert post.body["spec"]["workflowTemplateRef"]["name"] == submitted.body["resourceName"]


def test_dry_run_prints_what_the_kube_transport_creates(kube: KubeServer) -> None:
    result = run("manager", "--dry-run", "--namespace", "team-z", "--tag", "t1")
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert docs[1]["metadata"] == {"generateName": "synesis-manager-", "namespace": "team-z"}
    assert docs[0]["metadata"]["namespace"] == "team-z"
    assert kube.state.requests == []


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, None, "team-a"),  # the kube context's namespace (oc project)
        ("team-b", None, "team-b"),
        (None, "team-c", "team-c"),  # ARGO_NAMESPACE beats the context
        ("team-b", "team-c", "team-b"),
    ],
)
def test_namespace_precedence(
    kube: KubeServer,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    expected: str,
) -> None:
    if env:
        monkeypatch.setenv("ARGO_NAMESPACE", env)
    args = ["manager", "--via", "kube"] + (["--namespace", flag] if flag else [])
    result = run(*args)
    assert result.exit_code == 0, result.output
    (post,) = kube.state.calls("POST", "/workflows")
    assert post.path == f"/apis/argoproj.io/v1alpha1/namespaces/{expected}/workflows"
    template = kube.state.calls("POST", "/workflowtemplates")[0].body
    assert template["metadata"]["namespace"] == expected


def test_bad_namespace_is_exit_2(kube: KubeServer) -> None:
    result = run("manager", "--via", "kube", "--namespace", "Team_A")
    assert result.exit_code == 2 and "--namespace 'Team_A'" in result.output
    assert kube.state.requests == []


def test_wait_watches_until_success_and_prints_outputs(kube: KubeServer) -> None:
    kube.state.phases = [RUNNING, _succeeded("synesis-manager-00001")]
    result = run("manager", "--via", "kube", "--wait")
    assert result.exit_code == 0, result.output
    assert "synesis-manager-00001: Running 1/4" in result.output
    assert "download: Running" in result.output and "download: Succeeded" in result.output
    assert "synesis-manager-00001: Succeeded 4/4" in result.output
    assert '"digest": "sha256:abc"' in result.output
    (get,) = kube.state.calls("GET", f"{WF_PATH}/synesis-manager-00001")
    (watch,) = [r for r in kube.state.calls("GET", WF_PATH) if "watch" in r.query]
    assert watch.path == WF_PATH
    assert watch.query["fieldSelector"] == "metadata.name=synesis-manager-00001"
    assert watch.query["resourceVersion"]  # from the GET: no event is missed in between
    assert watch.headers["Authorization"] == f"Bearer {TOKEN}"


def test_wait_exits_1_with_the_failed_step_message(kube: KubeServer) -> None:
    kube.state.phases = [RUNNING, FAILED]
    result = run("manager", "--via", "kube", "--wait")
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert "workflow synesis-manager-00001 Failed: child 'download' failed" in error
    assert "download: Error (exit code 1): gated repo, 401" in error
    assert result.output.strip().splitlines()[-1] == error


def test_wait_relists_after_an_expired_watch(kube: KubeServer) -> None:
    kube.state.watch_gone = 1
    kube.state.phases = [_succeeded("synesis-manager-00001")]
    result = run("manager", "--via", "kube", "--wait")
    assert result.exit_code == 0, result.output
    gets = kube.state.calls("GET", f"{WF_PATH}/synesis-manager-00001")
    assert len(gets) == 2  # first state, then again after the 410
    watches = [r for r in kube.state.calls("GET", WF_PATH) if "watch" in r.query]
    assert len(watches) == 2


def test_wait_reconnects_when_a_watch_ends_quietly(kube: KubeServer) -> None:
    """A watch that times out with no event is resumed, not taken for the end."""
    created: list[str] = []

    def script_after_first_watch() -> None:
        import time

        for _ in range(200):
            watches = [r for r in kube.state.calls("GET", WF_PATH) if "watch" in r.query]
            if watches:
                with kube.state.lock:
                    kube.state.phases = [_succeeded("synesis-manager-00001")]
                created.append("scripted")
                return
            time.sleep(0.02)

    import threading

    thread = threading.Thread(target=script_after_first_watch)
    thread.start()
    result = run("manager", "--via", "kube", "--wait")
    thread.join()
    assert result.exit_code == 0, result.output
    assert created == ["scripted"]
    watches = [r for r in kube.state.calls("GET", WF_PATH) if "watch" in r.query]
    assert len(watches) >= 2


# -- status and retry, both transports ---------------------------------------------------------


def _kube_workflow(kube: KubeServer, status: dict[str, Any]) -> str:
    assert run("manager", "--via", "kube", "--tag", "t9").exit_code == 0
    (path,) = kube.state.of_kind("workflows")
    kube.state.objects[path]["status"] = status
    return path.rsplit("/", 1)[1]


def _argo_workflow(argo_cluster: ArgoServer, status: dict[str, Any]) -> str:
    assert run("manager", "--via", "argo", "--tag", "t9").exit_code == 0
    ((_, name),) = argo_cluster.state.workflows
    argo_cluster.state.workflows[("team-a", name)]["status"] = status
    return str(name)


@pytest.mark.parametrize("via", ["kube", "argo"])
def test_status_prints_phase_progress_and_failed_step(
    via: str, kube: KubeServer, argo_cluster: ArgoServer
) -> None:
    name = _kube_workflow(kube, FAILED) if via == "kube" else _argo_workflow(argo_cluster, FAILED)
    result = run("status", name, "--via", via)
    assert result.exit_code == 1
    assert f"{name}: Failed 1/4" in result.output
    (error,) = _errors(result)
    assert "child 'download' failed" in error and "gated repo, 401" in error


@pytest.mark.parametrize("via", ["kube", "argo"])
def test_status_of_a_running_workflow_is_one_json_line_exit_0(
    via: str, kube: KubeServer, argo_cluster: ArgoServer
) -> None:
    import json

    name = _kube_workflow(kube, RUNNING) if via == "kube" else _argo_workflow(argo_cluster, RUNNING)
    result = run("status", name, "--via", via)
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last == {"workflow": name, "phase": "Running", "progress": "1/4"}


@pytest.mark.parametrize("via", ["kube", "argo"])
def test_status_of_a_missing_workflow_is_exit_1(
    via: str, kube: KubeServer, argo_cluster: ArgoServer
) -> None:
    result = run("status", "nope-123", "--via", via)
    assert result.exit_code == 1
    assert _errors(result) == ["error: workflow nope-123 not found in team-a"]


def test_retry_on_argo_uses_the_retry_endpoint(argo_cluster: ArgoServer) -> None:
    name = _argo_workflow(argo_cluster, FAILED)
    result = run("retry", name)  # auto: ARGO_SERVER is set
    assert result.exit_code == 0, result.output
    (put,) = argo_cluster.state.calls("PUT")
    assert put.path == f"/api/v1/workflows/team-a/{name}/retry"
    assert put.body["name"] == name and put.headers["Authorization"] == f"Bearer {ARGO_TOKEN}"
    assert f"retried {name}" in result.output
    assert f"{argo_cluster.url}/workflows/team-a/{name}" in result.output


def test_retry_on_argo_refused_by_the_server_is_exit_1(argo_cluster: ArgoServer) -> None:
    name = _argo_workflow(argo_cluster, RUNNING)
    result = run("retry", name)
    assert result.exit_code == 1 and len(_errors(result)) == 1


def test_retry_on_kube_explains_and_does_nothing_without_consent(kube: KubeServer) -> None:
    name = _kube_workflow(kube, FAILED)
    result = run("retry", name, "--via", "kube")
    assert result.exit_code == 1
    assert "needs the Argo Server" in result.output
    (error,) = _errors(result)
    assert "--resubmit" in error and "--yes" in error
    assert len(kube.state.calls("POST", WF_PATH)) == 1  # only the original submit


@pytest.mark.parametrize("flag", ["--yes", "--resubmit"])
def test_retry_on_kube_resubmits_the_same_template_and_parameters_with_resume(
    flag: str, kube: KubeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_INSTANCEID", "dsp-team-a")
    name = _kube_workflow(kube, FAILED)
    result = run("retry", name, "--via", "kube", flag)
    assert result.exit_code == 0, result.output
    original, again = (p.body for p in kube.state.calls("POST", WF_PATH))
    assert again["spec"]["workflowTemplateRef"] == original["spec"]["workflowTemplateRef"]
    assert again["metadata"]["labels"] == {INSTANCE: "dsp-team-a"}
    assert _params(original)["resume"] == "false"
    assert _params(again) == {**_params(original), "resume": "true"}
    new = kube.state.calls("POST", WF_PATH)  # names come from the stand-in
    assert new and f"resubmitted {name} as synesis-manager-00002" in result.output


def test_retry_on_kube_refuses_to_resubmit_a_running_workflow(kube: KubeServer) -> None:
    name = _kube_workflow(kube, RUNNING)
    result = run("retry", name, "--via", "kube", "--yes")
    assert result.exit_code == 2
    assert _errors(result) == [
        f"error: workflow {name} is still Running; wait for it to end (status {name} --wait) "
        "before resubmitting"
    ]
    assert len(kube.state.calls("POST", WF_PATH)) == 1


def test_retry_of_a_missing_workflow_on_kube_fails_before_asking(kube: KubeServer) -> None:
    result = run("retry", "nope-1", "--via", "kube")
    assert result.exit_code == 1
    assert result.output.strip() == "error: workflow nope-1 not found in team-a"


def test_retry_on_argo_can_resubmit_too(argo_cluster: ArgoServer) -> None:
    name = _argo_workflow(argo_cluster, FAILED)
    result = run("retry", name, "--resubmit")
    assert result.exit_code == 0, result.output
    submits = argo_cluster.state.calls("POST", "/api/v1/workflows/team-a/submit")
    assert len(submits) == 2
    params = dict(p.split("=", 1) for p in submits[1].body["submitOptions"]["parameters"])
    assert params["resume"] == "true" and params["tag"] == "t9"


# -- bootstrap through the API -----------------------------------------------------------------


def test_bootstrap_applies_core_objects_server_side_and_submits_the_build(
    kube: KubeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_INSTANCEID", "dsp-team-a")
    out = tmp_path / "manifests"
    args = ["bootstrap", "--via", "kube", "--apply", "--out", str(out),
            "--git-repo", "https://git.example.com/synesis.git"]  # fmt: skip
    result = run(*args)
    assert result.exit_code == 0, result.output
    patches = kube.state.calls("PATCH")
    assert [p.path.rsplit("/", 2)[-2:] for p in patches] == [
        ["persistentvolumeclaims", "modelcar-build-pvc"],
        ["persistentvolumeclaims", "executor-build-pvc"],
        ["serviceaccounts", "synesis-pipelines"],
        ["roles", "synesis-pipelines"],
        ["rolebindings", "synesis-pipelines"],
    ]  # the placeholder Secret is not applied
    for patch in patches:
        assert patch.headers["Content-Type"] == "application/apply-patch+yaml"
        assert patch.query["fieldManager"] == "synesis-pipelines"
        assert patch.query["force"].lower() == "true"
        assert "/namespaces/team-a/" in patch.path
    (build,) = kube.state.calls("POST", WF_PATH)
    assert build.body["metadata"]["generateName"] == "synesis-image-build-"
    assert build.body["metadata"]["labels"][INSTANCE] == "dsp-team-a"
    assert "submitted synesis-image-build-" in result.output

    secret = out / "hf-hub-secret.yaml"
    hub_token = "hf_realtoken0123456789"
    secret.write_text(secret.read_text().replace("REPLACE_WITH_YOUR_HF_TOKEN", hub_token))
    again = run("-v", *args)  # debug logging too: the Hub token stays out of it
    assert again.exit_code == 0, again.output
    (applied,) = kube.state.calls("PATCH", "/secrets/hf-hub-secret")
    assert applied.body["stringData"] == {"token": hub_token}
    assert hub_token not in again.output
    assert base64.b64encode(hub_token.encode()).decode() not in again.output


def test_bootstrap_forbidden_rbac_names_the_admin_role(kube: KubeServer, tmp_path: Path) -> None:
    kube.state.forbidden_namespaces = {"team-a"}
    result = run("bootstrap", "--via", "kube", "--apply", "--out", str(tmp_path / "m"),
                 "--git-repo", "https://git.example.com/s.git")  # fmt: skip
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert "add-role-to-user admin alice -n team-a" in error


# -- choosing a transport ----------------------------------------------------------------------


def test_auto_picks_argo_when_argo_server_is_set_even_with_a_kubeconfig(
    kube: KubeServer, argo_cluster: ArgoServer
) -> None:
    result = run("manager")
    assert result.exit_code == 0, result.output
    assert argo_cluster.state.calls("POST", "/api/v1/workflows/team-a/submit")
    assert kube.state.requests == []


def test_auto_picks_kube_when_only_a_kubeconfig_exists(kube: KubeServer) -> None:
    result = run("manager")
    assert result.exit_code == 0, result.output
    assert kube.state.calls("POST", WF_PATH)


def test_auto_finds_the_default_kubeconfig_in_home(
    kube: KubeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBECONFIG")
    (tmp_path / ".kube").mkdir()
    kube.write_kubeconfig(tmp_path / ".kube" / "config", token=TOKEN)
    result = run("catalog", "--apply")
    assert result.exit_code == 0, result.output
    assert len(kube.state.calls("POST", WT_PATH)) == 3


def test_auto_picks_kube_in_a_pod_with_a_service_account(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = config.load_cluster()
    monkeypatch.setattr(kube_client, "SA_DIR", tmp_path / "sa")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ConfigError, match="ARGO_SERVER is not set"):
        transport.choose("auto", cfg)  # the host alone is not credentials
    (tmp_path / "sa").mkdir()
    (tmp_path / "sa" / "token").write_text("sa-token-0123456789")
    assert transport.choose("auto", cfg) == "kube"


def test_no_argo_server_and_no_kubeconfig_is_one_line_exit_2() -> None:
    for args in (["manager"], ["catalog", "--apply"], ["status", "x"], ["retry", "x"]):
        result = run(*args)
        if args == ["manager"]:
            assert "ECR_URI" in result.output  # checked before any connection
            continue
        assert result.exit_code == 2, (args, result.output)
        (error,) = _errors(result)
        assert result.output.strip() == error
        assert "ARGO_SERVER" in error and "oc login" in error and "KUBECONFIG" in error


def test_via_kube_without_a_kubeconfig_is_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECR_URI", ECR)
    result = run("manager", "--via", "kube")
    assert result.exit_code == 2 and "oc login" in result.output


def test_a_broken_kubeconfig_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "broken"
    path.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    monkeypatch.setenv("KUBECONFIG", str(path))
    result = run("catalog", "--apply", "--via", "kube")
    assert result.exit_code == 2
    (error,) = _errors(result)
    assert error.startswith(f"error: kubeconfig {path}") and "oc login" in error


# -- refusals ----------------------------------------------------------------------------------


def test_expired_token_is_one_line_naming_oc_login_and_never_printed(
    kube: KubeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stale = "sha256~expired-token-abcdef987654"
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "stale", token=stale)))
    result = run("manager", "--via", "kube")
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert result.output.strip() == error
    assert "HTTP 401" in error and "`oc login`" in error
    assert stale not in result.output and TOKEN not in result.output


def test_forbidden_namespace_names_the_flag_and_the_role_to_grant(kube: KubeServer) -> None:
    kube.state.forbidden_namespaces = {"team-b"}
    result = run("catalog", "--apply", "--via", "kube", "--namespace", "team-b")
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert result.output.strip() == error
    assert "HTTP 403" in error and "--namespace" in error
    assert "oc adm policy add-role-to-user edit alice -n team-b" in error
    assert "workflowtemplates" in error
    assert TOKEN not in result.output


def test_a_cluster_without_the_argo_api_is_one_line(
    kube: KubeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_client, "GROUP", "argoproj.example")
    result = run("catalog", "--apply", "--via", "kube")
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert "HTTP 404" in error and "Argo Workflows" in error


def test_unreachable_api_server_is_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dead = KubeServer()
    dead.url = "http://127.0.0.1:9"
    monkeypatch.setenv("KUBECONFIG", str(dead.write_kubeconfig(tmp_path / "kc", token=TOKEN)))
    dead._server.httpd.server_close()  # never served: nothing listens on port 9
    result = run("status", "x", "--via", "kube")
    assert result.exit_code == 1
    (error,) = _errors(result)
    assert "http://127.0.0.1:9 is unreachable" in error


def test_in_cluster_credentials_load_token_and_namespace_from_the_pod(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No pod here: the service-account files are written to a temp dir (the client only
    reads them), and nothing is sent — the API server would be https://10.0.0.1:443."""
    from steps import redact

    sa = tmp_path / "sa"
    sa.mkdir()
    token = "sa-token-in-cluster-0123456789"
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (sa / "namespace").write_text("project-x\n")
    monkeypatch.setattr(kube_client, "SA_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    client = kube_client.KubeClient.connect(namespace=None, default_namespace="synesis")
    assert client.host == "https://10.0.0.1:443"
    assert client.namespace == "project-x" and client.source == "the pod's service account"
    assert token not in redact.redact(f"Authorization: Bearer {token}")
    explicit = kube_client.KubeClient.connect(namespace="team-q", default_namespace="synesis")
    assert explicit.namespace == "team-q"


def test_a_bad_controller_instance_id_is_exit_2_naming_the_variable(
    kube: KubeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGO_INSTANCEID", "not a label!")
    result = run("manager", "--via", "kube")
    assert result.exit_code == 2
    (error,) = _errors(result)
    assert "ARGO_INSTANCEID" in error and "label value" in error
    assert kube.state.requests == []
