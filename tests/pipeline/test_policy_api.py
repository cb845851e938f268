"""Guardrails policy editing over real HTTP and through the CLI, against the running platform: create, update,
history, diff, rollback; invalid policies refused with messages while the current version stays; the admin key."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, start_service
from tests.guardrails.policies import (
    BILLION_LAUGHS,
    COLANG,
    CONFIG,
    DEEP_BLOCK_YAML,
    DEEP_FLOW_YAML,
    SELF_CONTAINED_YAML,
)
from tests.pipeline.conftest import ADMIN_KEY, pipeline_url

API = "/v1/guardrails/configs"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
V1 = {"config.yml": CONFIG, "rails.co": COLANG}
V2 = {"config.yml": CONFIG.replace("manuals", "manuals, briefly"), "rails.co": COLANG}
INVALID = {
    "bad YAML": ({**V1, "config.yml": CONFIG + "  output: [unclosed\n"}, ["config.yml, line", "invalid YAML"]),
    "unknown flow": ({**V1, "config.yml": CONFIG + "      - no such flow here\n"}, ["no such flow here"]),
    "Python file": ({**V1, "actions.py": "import os\n"}, ["actions.py", "Python"]),
    "missing prompt": ({**V1, "config.yml": CONFIG.replace("refuse secrets", "self check input")},
                       ["self_check_input", "prompt"]),
}


@pytest.fixture(scope="module")
def api(platform):
    with httpx.Client(base_url=pipeline_url(platform), timeout=60) as client:
        yield client


def new_id() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


def create(api: httpx.Client, policy_id: str, files: dict[str, str]) -> dict:
    response = api.post(API, json={"id": policy_id, "files": files, "comment": "first"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def test_the_default_policy_is_listed(api):
    listing = api.get(API).json()
    default = next(c for c in listing["configs"] if c["id"] == "default")
    assert default["version"] >= 1 and default["description"]
    assert "config.yml" in api.get(f"{API}/default").json()["files"]


def test_create_update_history_diff_rollback(api):
    policy_id = new_id()
    assert create(api, policy_id, V1)["version"] == 1
    got = api.get(f"{API}/{policy_id}").json()
    assert got["files"] == V1 and got["version"] == 1 and got["comment"] == "first"

    updated = api.put(f"{API}/{policy_id}", json={"files": V2, "expected_version": 1, "comment": "brief"},
                      headers=ADMIN)
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    assert api.get(f"{API}/{policy_id}").json()["files"] == V2
    assert api.get(f"{API}/{policy_id}", params={"version": 1}).json()["files"] == V1

    history = api.get(f"{API}/{policy_id}/history").json()
    assert history["current_version"] == 2 and [v["version"] for v in history["versions"]] == [2, 1]

    diff = api.get(f"{API}/{policy_id}/diff", params={"from_version": 1, "to_version": 2}).json()
    assert list(diff["files"]) == ["config.yml"]
    assert "+# Answers questions about the manuals, briefly." in diff["files"]["config.yml"]

    rolled = api.post(f"{API}/{policy_id}/rollback", json={"version": 1}, headers=ADMIN)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 3 and rolled.json()["rollback_of"] == 1
    assert api.get(f"{API}/{policy_id}").json()["files"] == V1

    stale = api.put(f"{API}/{policy_id}", json={"files": V2, "expected_version": 2}, headers=ADMIN)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "version_conflict"
    assert api.get(f"{API}/{policy_id}").json()["version"] == 3


@pytest.mark.parametrize("files, expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_policies_are_refused_and_the_current_version_stays(api, files, expected):
    policy_id = new_id()
    create(api, policy_id, V1)
    response = api.put(f"{API}/{policy_id}", json={"files": files}, headers=ADMIN)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_policy" and error["problems"]
    for needle in expected:
        assert needle.lower() in error["message"].lower(), error["message"]
    current = api.get(f"{API}/{policy_id}").json()
    assert current["version"] == 1 and current["files"] == V1
    assert api.post(API, json={"id": new_id(), "files": files}, headers=ADMIN).status_code == 422

    validated = api.post(f"{API}/validate", json={"files": files}).json()
    assert validated["valid"] is False and validated["problems"] == error["problems"]


PATHOLOGICAL_YAML = {
    "nested 100000 deep": ({**V1, "config.yml": CONFIG + DEEP_FLOW_YAML}, "config.yml, line 10, column 70"),
    "nested 650 deep in blocks": ({**V1, "prompts.yml": DEEP_BLOCK_YAML}, "prompts.yml, line 65"),
    "billion laughs": ({**V1, "config.yml": CONFIG + BILLION_LAUGHS}, "aliases expand the document"),
    "contains itself": ({**V1, "config.yml": CONFIG + SELF_CONTAINED_YAML}, "inside its own anchor"),
}


@pytest.mark.parametrize("files, needle", PATHOLOGICAL_YAML.values(), ids=PATHOLOGICAL_YAML.keys())
def test_pathological_yaml_is_a_422_naming_the_place_not_a_500(api, files, needle):
    policy_id = new_id()
    refused = api.post(API, json={"id": policy_id, "files": files}, headers=ADMIN)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_policy" and "invalid YAML" in error["message"] and needle in error["message"]
    assert api.get(f"{API}/{policy_id}").status_code == 404

    create(api, policy_id, V1)
    assert api.put(f"{API}/{policy_id}", json={"files": files}, headers=ADMIN).status_code == 422
    assert api.get(f"{API}/{policy_id}").json()["version"] == 1
    validated = api.post(f"{API}/validate", json={"files": files})
    assert validated.status_code == 200 and validated.json() == {"valid": False, "problems": error["problems"]}


def test_validate_a_valid_policy(api):
    assert api.post(f"{API}/validate", json={"files": V1}).json() == {"valid": True, "problems": []}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_KEY}],
                         ids=["no key", "wrong key", "not bearer"])
def test_changes_need_the_admin_key(api, headers):
    policy_id = new_id()
    attempts = [api.post(API, json={"id": policy_id, "files": V1}, headers=headers),
                api.put(f"{API}/default", json={"files": V1}, headers=headers),
                api.post(f"{API}/default/rollback", json={"version": 1}, headers=headers),
                api.delete(f"{API}/default", headers=headers)]
    for response in attempts:
        assert response.status_code == 403, response.text
        assert "admin" in response.json()["error"]["message"]
    assert api.get(f"{API}/{policy_id}").status_code == 404


def test_delete(api):
    policy_id = new_id()
    create(api, policy_id, V1)
    assert api.delete(f"{API}/{policy_id}", headers=ADMIN).status_code == 200
    assert api.get(f"{API}/{policy_id}").status_code == 404
    assert api.delete(f"{API}/{policy_id}", headers=ADMIN).status_code == 404
    undeletable = api.delete(f"{API}/default", headers=ADMIN)
    assert undeletable.status_code == 409 and "cannot be deleted" in undeletable.json()["error"]["message"]


def test_bad_requests(api):
    assert api.post(API, json={"id": "Bad Id", "files": V1}, headers=ADMIN).status_code == 400
    assert api.post(API, json={"id": new_id()}, headers=ADMIN).status_code == 422  # no files
    assert api.get(f"{API}/nothing-here").json()["error"]["code"] == "policy_not_found"
    assert api.get(f"{API}/default", params={"version": 999}).status_code == 404
    existing = new_id()
    create(api, existing, V1)
    assert api.post(API, json={"id": existing, "files": V1}, headers=ADMIN).status_code == 409


# --- the CLI --------------------------------------------------------------------------------------------------

def nimrag(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimrag.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "NIMRAG_ADMIN_API_KEY": "", **(env or {})}, timeout=120)


def write_policy(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_cli_apply_show_diff_rollback(platform, tmp_path):
    url, policy_id = pipeline_url(platform), new_id()
    admin = ["--url", url, "--admin-key", ADMIN_KEY]
    first = write_policy(tmp_path / "v1", V1)
    second = write_policy(tmp_path / "v2", V2)

    out = nimrag("policy", "validate", str(first), "--url", url)
    assert out.returncode == 0 and "valid" in out.stdout and "with the pipeline" in out.stderr, out.stderr
    out = nimrag("policy", "apply", str(first), "--id", policy_id, "--comment", "from the CLI", *admin)
    assert out.returncode == 0 and "created, version 1" in out.stdout, out.stderr
    out = nimrag("policy", "apply", str(second), "--id", policy_id, *admin)
    assert out.returncode == 0 and "updated, version 2" in out.stdout, out.stderr
    out = nimrag("policy", "apply", str(second), "--id", policy_id, *admin)
    assert out.returncode == 0 and "unchanged" in out.stdout, out.stderr

    out = nimrag("policy", "list", "--url", url)
    assert out.returncode == 0 and policy_id in out.stdout and "default" in out.stdout
    out = nimrag("policy", "show", policy_id, "--version", "1", "--file", "config.yml", "--url", url)
    assert out.returncode == 0 and out.stdout == V1["config.yml"]
    out = nimrag("policy", "diff", policy_id, "--from", "1", "--to", "2", "--url", url)
    assert out.returncode == 0 and "+# Answers questions about the manuals, briefly." in out.stdout
    out = nimrag("policy", "rollback", policy_id, "1", *admin)
    assert out.returncode == 0 and "version 3" in out.stdout, out.stderr
    out = nimrag("policy", "history", policy_id, "--url", url)
    assert out.returncode == 0 and "rollback to 1" in out.stdout


def test_cli_errors_are_one_line_with_the_exit_code_of_their_kind(platform, tmp_path):
    url = pipeline_url(platform)
    good = write_policy(tmp_path / "good", V1)
    bad = write_policy(tmp_path / "bad", INVALID["unknown flow"][0])

    out = nimrag("policy", "apply", str(good), "--id", new_id(), "--url", url)  # no admin key: refused, 4
    assert out.returncode == 4 and "admin" in out.stderr and "Traceback" not in out.stderr
    out = nimrag("policy", "apply", str(bad), "--id", new_id(), "--url", url, "--admin-key", ADMIN_KEY)
    assert out.returncode == 4 and "no such flow here" in out.stderr and "(HTTP 422)" in out.stderr
    out = nimrag("policy", "validate", str(bad), "--url", url)  # the check ran and found problems: 1
    assert out.returncode == 1 and "no such flow here" in out.stderr
    out = nimrag("policy", "show", "nothing-here", "--url", url)
    assert out.returncode == 4 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    out = nimrag("policy", "list", "--url", f"http://127.0.0.1:{free_port()}")  # nothing there: unavailable, 3
    assert out.returncode == 3 and "no pipeline answers" in out.stderr and "Traceback" not in out.stderr


def test_cli_validates_in_process_without_a_pipeline(platform, tmp_path):
    services = {"NIMRAG_PIPELINE_LLM_URL": f"http://127.0.0.1:{platform.ports['llm']}/v1",
                "NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{platform.ports['embed']}/v1"}
    nowhere = f"http://127.0.0.1:{free_port()}"
    out = nimrag("policy", "validate", str(write_policy(tmp_path / "good", V1)), "--url", nowhere, env=services)
    assert out.returncode == 0 and "in-process" in out.stderr, out.stderr
    bad = write_policy(tmp_path / "bad", INVALID["Python file"][0])
    out = nimrag("policy", "validate", str(bad), "--url", nowhere, env=services)
    assert out.returncode == 1 and "actions.py" in out.stderr


def test_the_admin_key_opens_what_a_normal_key_opens():
    from nimrag.pipeline.app import accepted_keys
    from nimrag.pipeline.settings import PipelineSettings

    assert accepted_keys(PipelineSettings(api_keys="a,b", admin_api_key="admin")) == ["a", "b", "admin"]
    assert accepted_keys(PipelineSettings(api_keys="", admin_api_key="admin")) == []  # an open API stays open
    assert accepted_keys(PipelineSettings(api_keys="a")) == ["a"]


@pytest.mark.parametrize("method,path,body,status,needle", [
    ("post", "/{id}/rollback", {"version": 999}, 404, "999"),
    ("get", "/{id}/diff?from_version=1&to_version=999", None, 404, "999"),
    ("put", "/{id}", {"files": {"config.yml": "# " + "x" * (1024 * 1024)}}, 422, "bytes"),
    ("put", "/{id}", {"files": {"../config.yml": "x: 1\n"}}, 422, "../config.yml"),
    ("put", "/{id}", {"files": "config.yml"}, 422, "files"),
    ("post", "/{id}/rollback", {"version": 0}, 422, "version"),
], ids=["rollback to no version", "diff to no version", "policy too large", "file in a folder", "files not a map",
        "version 0"])
def test_more_bad_requests_are_clear_4xx(api, method, path, body, status, needle):
    policy_id = new_id()
    create(api, policy_id, V1)
    kwargs = {"json": body} if body is not None else {}
    response = api.request(method.upper(), API + path.format(id=policy_id), headers=ADMIN, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"] or needle == error.get("param"), error
    assert api.get(f"{API}/{policy_id}").json()["version"] == 1  # nothing changed


def test_malformed_json_is_a_400_not_a_500(api):
    response = api.post(API + "/validate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code in (400, 422) and "error" in response.json()


# --- replicas: one writer, read-only replicas on the same folder -----------------------------------------------

def read_only_replica(tmp_path: Path, policies: Path):
    """A pipeline process of its own serving ``policies`` read-only, as a replica on a read-only mount does; it
    needs no model service to read policies or to refuse edits."""
    closed = f"http://127.0.0.1:{free_port()}/v1"
    return start_service("pipeline", tmp_path, env={
        "NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "data"), "NIMRAG_PIPELINE_GUARDRAILS_PATH": str(policies),
        "NIMRAG_PIPELINE_GUARDRAILS_READ_ONLY": "true", "NIMRAG_PIPELINE_ADMIN_API_KEY": ADMIN_KEY,
        "NIMRAG_PIPELINE_EMBED_URL": closed, "NIMRAG_PIPELINE_RERANK_URL": closed, "NIMRAG_PIPELINE_LLM_URL": closed})


def set_mode(root: Path, files: int, folders: int) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(folders if path.is_dir() else files)


def test_a_read_only_replica_serves_the_writers_policies_and_refuses_edits(tmp_path):
    from nimrag.guardrails.store import PolicyStore

    policies = tmp_path / "policies"
    writer = PolicyStore(policies)  # the writer replica's store: it seeds the default policy
    writer.create("manuals", V1)
    replica = read_only_replica(tmp_path, policies)
    try:
        with httpx.Client(base_url=replica.base_url, timeout=60) as client:
            assert {c["id"] for c in client.get(API).json()["configs"]} == {"default", "manuals"}
            assert client.get(f"{API}/manuals").json()["version"] == 1
            writer.update("manuals", V2, expected_version=1)  # the writer edits: the replica serves it at once
            got = client.get(f"{API}/manuals").json()
            assert got["version"] == 2 and got["files"] == V2

            set_mode(policies, 0o444, 0o555)  # now a read-only mount
            assert [v["version"] for v in client.get(f"{API}/manuals/history").json()["versions"]] == [2, 1]
            assert list(client.get(f"{API}/manuals/diff").json()["files"]) == ["config.yml"]
            assert client.get(f"{API}/default").json()["files"]["config.yml"]
            edits = {"create": client.post(API, json={"id": new_id(), "files": V1}, headers=ADMIN),
                     "update": client.put(f"{API}/manuals", json={"files": V1}, headers=ADMIN),
                     "rollback": client.post(f"{API}/manuals/rollback", json={"version": 1}, headers=ADMIN),
                     "delete": client.delete(f"{API}/manuals", headers=ADMIN)}
            for name, response in edits.items():
                assert response.status_code == 403, (name, response.text)
                error = response.json()["error"]
                assert (error["code"], error["type"]) == ("policies_read_only", "permission_error"), name
                assert "read-only" in error["message"] and "writer replica" in error["message"], name
            assert client.get(f"{API}/manuals").json()["version"] == 2
    finally:
        replica.stop()
        set_mode(policies, 0o644, 0o755)
    assert "Traceback" not in replica.log()
    if os.geteuid() == 0:
        pytest.skip("running as root, for whom chmod 0o555 stops no write: the replica served a folder that was not "
                    "really read-only here (its refusals above come from the read-only setting, which they test)")


def test_a_read_only_replica_without_a_default_policy_does_not_start(tmp_path):
    policies = tmp_path / "empty-policies"
    policies.mkdir()
    with pytest.raises(RuntimeError) as caught:
        read_only_replica(tmp_path, policies)
    assert str(policies) in str(caught.value) and "read-only" in str(caught.value)
    assert "Traceback" not in str(caught.value) and list(policies.iterdir()) == []
