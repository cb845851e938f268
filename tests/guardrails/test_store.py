"""The policy store: immutable versions, history, diff, rollback, conflicts, deletion, the seeded default policy,
writers that die midway and writers in several processes at once."""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path

import pytest

from nimrag.guardrails import store as store_module
from nimrag.guardrails.store import (
    InvalidPolicyFiles,
    InvalidPolicyId,
    PolicyExists,
    PolicyNotFound,
    PolicyStore,
    ProtectedPolicy,
    VersionConflict,
    VersionNotFound,
    policy_sha256,
)

V1 = {"config.yml": "# Answers from the manuals.\nrails:\n  input:\n    flows: []\n",
      "prompts.yml": "prompts: []\n"}
V2 = {"config.yml": "# Answers from the manuals, politely.\nrails:\n  input:\n    flows: []\n",
      "extra.co": 'define bot greet\n  "Hello"\n'}


@pytest.fixture
def store(tmp_path: Path) -> PolicyStore:
    return PolicyStore(tmp_path / "policies", seed_default=False)


def test_create_get_update_history(store: PolicyStore):
    created = store.create("manuals", V1, comment="first", author="ana")
    assert created.version == 1 and created.author == "ana" and created.comment == "first"
    assert created.sha256 == policy_sha256(V1) and created.description == "Answers from the manuals."
    updated = store.update("manuals", V2, expected_version=1, comment="second")
    assert updated.version == 2
    assert store.current_version("manuals") == 2
    assert store.get("manuals").files == V2
    assert store.get("manuals", 1).files == V1 and store.get("manuals", 1).current_version == 2
    assert [v.version for v in store.history("manuals")] == [1, 2]
    assert [v.comment for v in store.history("manuals")] == ["first", "second"]
    assert [(s.id, s.version) for s in store.list()] == [("manuals", 2)]


def test_identical_update_writes_no_version(store: PolicyStore):
    store.create("manuals", V1)
    assert store.update("manuals", dict(V1)).version == 1
    assert len(store.history("manuals")) == 1


def test_diff_per_file(store: PolicyStore):
    store.create("manuals", V1)
    store.update("manuals", V2)
    whole = store.diff("manuals")  # current against the one before
    assert (whole.from_version, whole.to_version) == (1, 2)
    diff = whole.files
    assert set(diff) == {"config.yml", "prompts.yml", "extra.co"}
    assert "-# Answers from the manuals.\n" in diff["config.yml"]
    assert "+# Answers from the manuals, politely.\n" in diff["config.yml"]
    assert diff["prompts.yml"].startswith("--- manuals@1/prompts.yml\n+++ /dev/null")
    assert diff["extra.co"].startswith("--- /dev/null\n+++ manuals@2/extra.co")
    assert store.diff("manuals", 2, 2).files == {}
    with pytest.raises(VersionNotFound):
        store.diff("manuals", 1, 3)


def test_rollback_makes_a_new_version_with_the_old_files(store: PolicyStore):
    store.create("manuals", V1)
    store.update("manuals", V2)
    rolled = store.rollback("manuals", 1)
    assert rolled.version == 3 and rolled.rollback_of == 1 and "rollback to version 1" in rolled.comment
    assert store.get("manuals").files == V1
    assert store.get("manuals", 2).files == V2  # history only grows
    assert [v.version for v in store.history("manuals")] == [1, 2, 3]
    with pytest.raises(VersionNotFound):
        store.rollback("manuals", 9)


def test_stale_expected_version_conflicts_and_writes_nothing(store: PolicyStore):
    store.create("manuals", V1)
    store.update("manuals", V2, expected_version=1)
    with pytest.raises(VersionConflict) as caught:
        store.update("manuals", {"config.yml": "x: 1\n"}, expected_version=1)
    assert caught.value.current == 2 and "version 2, not 1" in str(caught.value)
    with pytest.raises(VersionConflict):
        store.rollback("manuals", 1, expected_version=1)
    assert store.current_version("manuals") == 2 and store.get("manuals").files == V2


def test_errors(store: PolicyStore):
    store.create("manuals", V1)
    with pytest.raises(PolicyExists):
        store.create("manuals", V2)
    with pytest.raises(PolicyNotFound):
        store.get("nothing")
    with pytest.raises(PolicyNotFound):
        store.update("nothing", V1)
    with pytest.raises(VersionNotFound):
        store.get("manuals", 2)
    for bad_id in ("", "Upper", "-dash", "a/b", "..", "x" * 65):
        with pytest.raises(InvalidPolicyId):
            store.create(bad_id, V1)
    for bad_files in ({}, {"../escape.yml": "x: 1"}, {".hidden.yml": "x: 1"}, {"sub/config.yml": "x: 1"}):
        with pytest.raises(InvalidPolicyFiles):
            store.create("other", bad_files)
    assert not store.exists("other")


def test_delete(store: PolicyStore):
    store.create("manuals", V1)
    store.update("manuals", V2)
    store.delete("manuals")
    assert not store.exists("manuals") and store.list() == []
    with pytest.raises(PolicyNotFound):
        store.current_version("manuals")
    with pytest.raises(PolicyNotFound):
        store.delete("manuals")
    # The id can be used again; versions number on, so that (id, version) never means two different policies.
    assert store.create("manuals", V2).version == 3
    assert [v.version for v in store.history("manuals")] == [3]
    assert store.diff("manuals").files == {}
    with pytest.raises(VersionNotFound):
        store.get("manuals", 1)
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".deleted-")] == []


def test_default_policy_is_seeded_and_cannot_be_deleted(tmp_path: Path):
    from nimrag.guardrails.runtime import DEFAULT_POLICY_DIR, read_policy_dir

    store = PolicyStore(tmp_path / "policies")
    assert store.get("default").files == read_policy_dir(DEFAULT_POLICY_DIR)
    assert store.history("default")[0].author == "nimrag"
    with pytest.raises(ProtectedPolicy):
        store.delete("default")
    store.update("default", V1)
    assert PolicyStore(tmp_path / "policies").current_version("default") == 2  # seeded once, edits kept


def test_current_version_follows_other_store_objects(store: PolicyStore):
    other = PolicyStore(store.root, seed_default=False)  # another process's view of the same folder
    store.create("manuals", V1)
    assert other.current_version("manuals") == 1
    store.update("manuals", V2)
    assert other.current_version("manuals") == 2
    store.delete("manuals")
    with pytest.raises(PolicyNotFound):
        other.current_version("manuals")


def test_a_writer_dying_before_the_pointer_moves_leaves_nothing_visible(store: PolicyStore, monkeypatch):
    store.create("manuals", V1)

    def die(*_):
        raise SystemExit("killed")  # after the version folder is renamed into place, before the pointer moves

    monkeypatch.setattr(store_module, "write_atomically", die)
    with pytest.raises(SystemExit):
        store.update("manuals", V2)
    monkeypatch.undo()
    (store.root / "manuals" / ".staging-dead").mkdir()  # and one that died while staging
    assert store.current_version("manuals") == 1 and store.get("manuals").files == V1
    assert [v.version for v in store.history("manuals")] == [1]
    with pytest.raises(VersionNotFound):
        store.get("manuals", 2)
    assert store.update("manuals", {"config.yml": "x: 1\n"}).version == 2  # the next writer cleans up
    assert store.get("manuals").files == {"config.yml": "x: 1\n"}
    assert not list((store.root / "manuals").glob(".staging-*"))


def _writer(root: str, worker: int, rounds: int, use_expected: bool) -> tuple[int, int]:
    """One process's edits: read the current version, write on top of it; a conflict means someone was faster."""
    store = PolicyStore(root, seed_default=False)
    written = conflicts = 0
    for round_ in range(rounds):
        files = {"config.yml": f"# worker {worker} round {round_}\nrails: {{}}\n",
                 f"w{worker}.co": f'define bot say {worker}\n  "{round_}"\n' * (1 + round_ * 50)}
        expected = store.current_version("shared") if use_expected else None
        time.sleep(random.random() * 0.01)
        try:
            store.update("shared", files, expected_version=expected, comment=f"{worker}:{round_}")
            written += 1
        except VersionConflict:
            conflicts += 1
        store.get("shared")  # reads meanwhile always see a whole version
    return written, conflicts


@pytest.mark.parametrize("use_expected", [True, False], ids=["expected-version", "last-writer-wins"])
def test_concurrent_writers_in_several_processes(tmp_path: Path, use_expected: bool):
    root = tmp_path / "policies"
    PolicyStore(root, seed_default=False).create("shared", V1)
    workers, rounds = 4, 6
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(_writer, [(str(root), w, rounds, use_expected) for w in range(workers)])
    written = sum(w for w, _ in results)
    assert all(w + c == rounds for w, c in results)
    if not use_expected:
        assert written == workers * rounds
    assert written >= 1
    store = PolicyStore(root, seed_default=False)
    history = store.history("shared")
    assert [v.version for v in history] == list(range(1, written + 2))
    for info in history:
        policy = store.get("shared", info.version)
        assert policy_sha256(policy.files) == info.sha256  # every version whole: files match their digest
    assert len({v.comment for v in history[1:]}) == written  # no edit recorded twice or lost
    assert not list((root / "shared").glob(".staging-*"))
