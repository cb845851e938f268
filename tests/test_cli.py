"""The nimrag command as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def nimrag(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimrag.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_profiles_list_shows_compatible_and_incompatible_with_reasons():
    out = nimrag("profiles", "list", "--service", "embed")
    assert out.returncode == 0, out.stderr
    assert "[embed] selected:" in out.stdout and "torch-cpu-fp32" in out.stdout
    as_json = json.loads(nimrag("profiles", "list", "--service", "embed", "--json").stdout)
    embed = as_json["services"]["embed"]
    ids = [p["id"] for p in embed["compatible"]] + [p["id"] for p in embed["incompatible"]]
    assert "torch-cuda-fp16" in ids and "torch-cpu-fp32" in ids
    assert embed["selected"] == embed["compatible"][0]["id"]
    assert all(p["reasons"] for p in embed["incompatible"])


def test_pinned_profile_shows_in_the_listing():
    out = nimrag("profiles", "list", "--service", "embed", "--json", env={"NIM_MODEL_PROFILE": "torch-cpu-fp32"})
    assert json.loads(out.stdout)["services"]["embed"]["selected"] == "torch-cpu-fp32"


def test_pinning_an_unknown_or_incompatible_profile_fails_at_start_with_the_reason():
    unknown = nimrag("serve", "embed", "--port", "1", env={"NIM_MODEL_PROFILE": "warp-drive"})
    assert unknown.returncode == 2 and "Unknown profile 'warp-drive'" in unknown.stderr
    import torch

    if not torch.cuda.is_available():
        gpu = nimrag("serve", "embed", "--port", "1", "--profile", "torch-cuda-fp16")
        assert gpu.returncode == 2 and "cannot run on this machine" in gpu.stderr


def test_serving_a_folder_that_is_not_a_model_fails_clearly(tmp_path):
    out = nimrag("serve", "embed", "--port", "1", "--model", str(tmp_path))
    assert out.returncode == 2 and "is not a model folder" in out.stderr


def test_rerank_profiles_never_pick_int8_on_their_own():
    listing = json.loads(nimrag("profiles", "list", "--service", "rerank", "--json").stdout)["services"]["rerank"]
    assert listing["selected"] != "onnx-cpu-int8"
    assert [p["id"] for p in listing["compatible"]][-1] == "onnx-cpu-int8"  # still there to pin


def test_reranking_with_a_folder_that_is_not_a_model_fails_clearly(tmp_path):
    out = nimrag("serve", "rerank", "--port", "1", "--model", str(tmp_path))
    assert out.returncode == 2 and "cannot read config.json" in out.stderr


# --- version, exit codes, errors without services --------------------------------------------------------------

NOWHERE = "http://127.0.0.1:9"  # nothing listens on the discard port
NO_SERVICES = {f"NIMRAG_PIPELINE_{name}_URL": f"{NOWHERE}/v1" for name in ("EMBED", "RERANK", "LLM")}


def test_a_setting_that_does_not_validate_is_one_line_naming_where_it_was_set():
    from_option = nimrag("serve", "embed", "--port", "0")
    assert from_option.returncode == 2 and "Traceback" not in from_option.stderr
    assert from_option.stderr.strip() == "nimrag: invalid setting --port=0: Input should be greater than or equal to 1"
    from_env = nimrag("ask", "hello", env={"NIMRAG_PIPELINE_PORT": "http"})
    assert from_env.returncode == 2 and "Traceback" not in from_env.stderr
    assert from_env.stderr.startswith("nimrag: invalid setting NIMRAG_PIPELINE_PORT='http': ")


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    out = nimrag("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"nimrag {version('nimrag')}"


def test_help_lists_the_exit_codes():
    from nimrag.errors import Exit

    out = nimrag("--help")
    assert out.returncode == 0
    epilog = out.stdout.split("exit codes:")[1]
    for code in (Exit.INCOMPLETE, Exit.USAGE, Exit.UNAVAILABLE, Exit.REFUSED, Exit.SERVER_ERROR, Exit.PLATFORM):
        assert f"\n  {int(code)} " in epilog


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The CLI's error: its last stderr line, which must be the only 'nimrag:' line, with no traceback."""
    errors = [line for line in out.stderr.splitlines() if line.startswith("nimrag:")]
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr
    return errors[0]


def test_ingest_and_ask_with_nothing_running_say_what_to_start(tmp_path):
    (tmp_path / "notes.md").write_text("The kettle is blue.")
    env = {"NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "data"), **NO_SERVICES}
    out = nimrag("ingest", str(tmp_path / "notes.md"), "--url", NOWHERE, env=env)
    assert out.returncode == 3
    assert f"no embedding service at {NOWHERE}" in one_line_error(out) and "nimrag up" in out.stderr

    from nimrag.pipeline.vectorstore.faiss import Catalog

    with Catalog(tmp_path / "data" / "collections") as catalog:
        catalog.create("notes", 384)
    out = nimrag("ask", "What colour is the kettle?", "--collection", "notes", "--url", NOWHERE, env=env)
    assert out.returncode == 3 and f"service at {NOWHERE}" in one_line_error(out) and "nimrag up" in out.stderr


def test_two_files_that_would_share_a_name_are_refused_before_anything_is_read(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.md").write_text(f"notes of {folder}")
    for args in ([str(tmp_path / "a" / "notes.md"), str(tmp_path / "b" / "notes.md")],
                 [str(tmp_path / "a"), str(tmp_path / "b")]):
        out = nimrag("ingest", *args, "--url", NOWHERE, env=NO_SERVICES)
        line = one_line_error(out)
        assert out.returncode == 2 and "'notes.md'" in line and str(tmp_path / "b" / "notes.md") in line
        assert "ingesting" not in out.stderr  # refused before any ingest began
    out = nimrag("ingest", str(tmp_path / "missing"), env=NO_SERVICES)
    assert out.returncode == 2 and "no such file or folder" in one_line_error(out)


# --- document names --------------------------------------------------------------------------------------------

def make_tree(root, files):
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"text of {name}")


def test_documents_are_named_relative_to_what_was_named(tmp_path, monkeypatch):
    from nimrag.inputs import named_inputs

    make_tree(tmp_path, ["docs/a/notes.md", "docs/b/notes.md", "docs/top.txt", "docs/.hidden/x.md"])
    monkeypatch.chdir(tmp_path)

    def names(*items):
        return [f.name for f in named_inputs(list(items))]

    assert names("docs") == ["a/notes.md", "b/notes.md", "top.txt"]
    assert names(str(tmp_path / "docs")) == names("docs/") == names("docs")
    assert names("docs/a/notes.md") == ["notes.md"]
    assert names("docs/*/notes.md") == ["a/notes.md", "b/notes.md"]
    assert names(str(tmp_path / "docs" / "*" / "notes.md")) == ["a/notes.md", "b/notes.md"]
    assert names("docs/**/*.md") == ["a/notes.md", "b/notes.md"]
    assert names("*/a") == ["docs/a/notes.md"]  # a folder matched by a glob: below the glob's fixed prefix
    assert names("docs", "docs/top.txt") == names("docs")  # a file named twice is ingested once
    monkeypatch.chdir(tmp_path / "docs")
    assert names(".") == names("../docs")


def test_a_file_whose_name_cannot_be_a_document_name_is_reported_not_sent(tmp_path):
    from nimrag.inputs import named_inputs

    make_tree(tmp_path, ["ok.md", "bad\x07bell.md"])
    files = {f.name: f.problem for f in named_inputs([str(tmp_path)])}
    assert files["ok.md"] is None and "control character" in files["bad\x07bell.md"]


@pytest.mark.parametrize("raw,expected", [
    ("notes.md", "notes.md"), ("a/notes.md", "a/notes.md"), ("./a//b/ notes.md", "a/b/notes.md"),
    ("a\\b\\notes.md", "a/b/notes.md"),
])
def test_document_names_are_relative_posix_paths(raw, expected):
    from nimrag.pipeline.ingest import checked_document_name

    assert checked_document_name(raw) == expected


@pytest.mark.parametrize("raw,reason", [
    ("../x.md", "'..'"), ("a/../../x.md", "'..'"), ("/etc/passwd", "absolute"), ("C:\\x.md", "absolute"),
    ("\\\\server\\share\\x.md", "absolute"), ("a\x00b.md", "control"), ("a\nb.md", "control"), ("", "empty"),
    ("./.", "empty"), ("x" * 256, "longer"),
])
def test_unsafe_document_names_are_refused(raw, reason):
    from nimrag.pipeline.ingest import checked_document_name

    with pytest.raises(ValueError, match=reason):
        checked_document_name(raw)
