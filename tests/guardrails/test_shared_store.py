"""Replicas sharing one policy folder: a change written by one process is read by another at once, two writers
racing on one version get one success and one conflict, and a read-only store (a read-only mount, editing through
one writer) serves every read, refuses every change, writes nothing and will not start without a default policy."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimrag.guardrails.store import (
    DEFAULT_POLICY_ID,
    LOCK_FILE,
    DefaultPolicyMissing,
    PolicyStore,
    ReadOnlyStore,
    VersionConflict,
)
from nimrag.services.common.errors import StartupError

V1 = {"config.yml": "# Answers from the manuals.\nrails: {}\n"}
V2 = {"config.yml": "# Answers from the manuals, politely.\nrails: {}\n", "extra.co": 'define bot hi\n  "Hi"\n'}
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing shared with this process but the folder


def _create(root: str, policy_id: str, files: dict[str, str]) -> int:
    return PolicyStore(root, seed_default=False).create(policy_id, files).version


def _read(root: str, policy_id: str) -> tuple[int, dict[str, str]]:
    policy = PolicyStore(root, read_only=True).get(policy_id)
    return policy.current_version, policy.files


def _update_at(root: str, worker: int, expected: int, start, results) -> None:
    """One replica's edit on top of ``expected``, released together with the other's by the barrier."""
    store = PolicyStore(root, seed_default=False)
    start.wait(timeout=60)
    try:
        version = store.update("shared", {"config.yml": f"# worker {worker}\nrails: {{}}\n"},
                               expected_version=expected, comment=f"worker {worker}").version
        results.put((worker, "written", version))
    except VersionConflict as exc:
        results.put((worker, "conflict", exc.current))


def test_a_change_in_one_process_is_read_at_once_in_another(tmp_path: Path):
    root = tmp_path / "policies"
    here = PolicyStore(root, seed_default=False)
    here.create(DEFAULT_POLICY_ID, V1)  # what a read-only replica needs to open the folder
    with SPAWN.Pool(1) as other:
        def there(function, *args):  # bounded: a pool whose worker cannot start would wait forever
            return other.apply_async(function, (str(root), *args)).get(timeout=120)

        assert there(_create, "manuals", V1) == 1
        assert here.current_version("manuals") == 1 and here.get("manuals").files == V1  # this object opened first
        here.update("manuals", V2, expected_version=1)
        assert there(_read, "manuals") == (2, V2)
        here.rollback("manuals", 1)
        assert there(_read, "manuals") == (3, V1)


def test_two_processes_updating_the_same_version_give_one_success_and_one_conflict(tmp_path: Path):
    root = tmp_path / "policies"
    PolicyStore(root, seed_default=False).create("shared", V1)
    start, results = SPAWN.Barrier(2), SPAWN.Queue()
    writers = [SPAWN.Process(target=_update_at, args=(str(root), w, 1, start, results)) for w in (0, 1)]
    for writer in writers:
        writer.start()
    outcomes = sorted((results.get(timeout=120) for _ in writers), key=lambda o: o[1], reverse=True)
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    (winner, won, version), (_, lost, seen) = outcomes
    assert (won, version, lost, seen) == ("written", 2, "conflict", 2)
    store = PolicyStore(root, seed_default=False)
    assert [v.version for v in store.history("shared")] == [1, 2]
    assert store.get("shared").files["config.yml"].startswith(f"# worker {winner}\n")


# --- read-only ------------------------------------------------------------------------------------------------

def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time: what a write would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def set_mode(root: Path, files: int, folders: int) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(folders if path.is_dir() else files)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder the writer replica filled, then made read-only for real (chmod), as a read-only mount is."""
    root = tmp_path / "policies"
    writer = PolicyStore(root, seed_default=False)
    writer.create(DEFAULT_POLICY_ID, V1)
    writer.create("manuals", V1)
    writer.update("manuals", V2)
    (root / LOCK_FILE).unlink()  # so that taking the lock would show
    set_mode(root, 0o444, 0o555)
    try:
        yield root
    finally:
        set_mode(root, 0o644, 0o755)


def test_a_read_only_store_serves_reads_refuses_changes_and_writes_nothing(read_only_folder: Path):
    before = tree(read_only_folder)
    store = PolicyStore(read_only_folder, read_only=True)
    assert store.current_version("manuals") == 2 and store.get("manuals").files == V2
    assert store.get("manuals", 1).files == V1
    assert [(s.id, s.version) for s in store.list()] == [("default", 1), ("manuals", 2)]
    assert [v.version for v in store.history("manuals")] == [1, 2]
    assert set(store.diff("manuals").files) == {"config.yml", "extra.co"}
    changes = {"create": lambda: store.create("other", V1), "update": lambda: store.update("manuals", V1),
               "rollback": lambda: store.rollback("manuals", 1), "delete": lambda: store.delete("manuals"),
               "delete default": lambda: store.delete(DEFAULT_POLICY_ID)}
    for name, change in changes.items():
        with pytest.raises(ReadOnlyStore, match="read-only"):
            change()
        assert tree(read_only_folder) == before, name
    assert not (read_only_folder / LOCK_FILE).exists()  # no lock taken, not even opened

    if os.geteuid() == 0:
        pytest.skip("running as root, for whom chmod 0o555 stops no write: the folder is not really read-only "
                    "here, so the check that a writable store on it is refused by the filesystem was skipped (the "
                    "read_only flag's checks above ran)")
    with pytest.raises(PermissionError):  # the folder really is read-only: only never writing works on it
        PolicyStore(read_only_folder, seed_default=False).update("manuals", V1)


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_a_read_only_store_without_a_default_policy_fails_at_start_naming_the_folder(tmp_path: Path, folder):
    root = tmp_path / "policies"
    if folder == "empty":
        root.mkdir()
    with pytest.raises(DefaultPolicyMissing) as caught:
        PolicyStore(root, read_only=True)
    assert isinstance(caught.value, StartupError)  # `nimrag serve` prints it as one line and exits
    message = str(caught.value)
    assert str(root) in message and "read-only" in message and "'default'" in message
    assert ("does not exist" in message) == (folder == "missing")
    assert root.exists() == (folder == "empty")  # nothing created
    if folder == "empty":
        assert list(root.iterdir()) == []
