"""Guardrails policies on disk, as immutable numbered versions and an atomically replaced pointer to the current one.

    <root>/.lock                           writers hold an exclusive flock on it (several processes may share root)
    <root>/<id>/current.json               {"version", "sha256"}: replaced with os.replace, so always whole
    <root>/<id>/<version>/meta.json        created, author, comment, sha256, description, rollback_of
    <root>/<id>/<version>/files/<name>     the policy's files (config.yml, prompts.yml, *.co), flat
    <root>/<id>/retired.json               {"last_version"}: left by a delete, so that a new policy of that id
                                           numbers on and (id, version) never names two different policies

A version is written into a staging folder, fsynced, then renamed into place, and only then does the pointer move:
a writer killed midway leaves a staging folder or a numbered version above the pointer, never a half version. The
next writer (holding the lock, so no other writer is midway) removes both. Readers take no lock: they read the
pointer and then the immutable version it names, so a read-only store (``read_only=True``: a replica on a read-only
mount, editing through one writer elsewhere) serves each change of the writer at once and never writes. Versions
are never edited; a rollback writes a new version with the old files. Validation is the caller's job
(nimrag.guardrails.service): the store only guards its own paths.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from nimrag.guardrails.policy_yaml import load_yaml
from nimrag.services.common.errors import StartupError
from nimrag.services.common.files import fsync_dir, write_atomically, write_synced

POLICY_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # no leading dot: nothing hidden, never '..'
DEFAULT_POLICY_ID = "default"
POINTER_FILE = "current.json"
RETIRED_FILE = "retired.json"
META_FILE = "meta.json"
FILES_DIR = "files"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
DELETED_PREFIX = ".deleted-"
DESCRIPTION_CHARS = 200


class StoreError(Exception):
    """Base of the policy store's errors; the message says what went wrong."""


class InvalidPolicyId(StoreError):
    pass


class InvalidPolicyFiles(StoreError):
    pass


class PolicyNotFound(StoreError):
    pass


class VersionNotFound(StoreError):
    pass


class PolicyExists(StoreError):
    pass


class ProtectedPolicy(StoreError):
    pass


class ReadOnlyStore(StoreError):
    pass


class DefaultPolicyMissing(StoreError, StartupError):
    """A read-only store cannot seed the default policy: the service cannot start."""


class VersionConflict(StoreError):
    def __init__(self, policy_id: str, expected: int, current: int):
        super().__init__(f"Policy '{policy_id}' is at version {current}, not {expected}: it was changed meanwhile. "
                         "Read it again and reapply your change.")
        self.current = current


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created: str  # ISO 8601, UTC
    author: str
    comment: str
    sha256: str
    description: str
    rollback_of: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Policy:
    id: str
    info: VersionInfo
    files: dict[str, str]
    current_version: int


@dataclass(frozen=True)
class PolicyDiff:
    from_version: int
    to_version: int
    files: dict[str, str]  # name -> unified diff, for the files that differ


@dataclass(frozen=True)
class PolicySummary:
    id: str
    version: int
    updated: str
    description: str


# --- helpers --------------------------------------------------------------------------------------------------

def policy_sha256(files: Mapping[str, str]) -> str:
    """One digest of the whole policy (names and contents), independent of the mapping's order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode(), files[name].encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def policy_description(files: Mapping[str, str]) -> str:
    """What a listing shows: config.yml's top-level ``description``, its first instruction, or its first comment."""
    text = files.get("config.yml", "")
    with contextlib.suppress(yaml.YAMLError):
        config = load_yaml(text)
        if isinstance(config, dict):
            if isinstance(config.get("description"), str):
                return _one_line(config["description"])
            for instruction in config.get("instructions") or []:
                if isinstance(instruction, dict) and isinstance(instruction.get("content"), str):
                    return _one_line(instruction["content"])
    for line in text.splitlines():
        if line.strip().startswith("#") and line.strip("# \t"):
            return _one_line(line.strip("# \t"))
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:DESCRIPTION_CHARS]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _remove_tree(path: Path, graveyard: Path) -> None:
    """Rename first (gone for readers at once), then delete at leisure."""
    tombstone = graveyard / f"{DELETED_PREFIX}{path.name}-{uuid.uuid4().hex}"
    try:
        os.rename(path, tombstone)
    except FileNotFoundError:
        return
    shutil.rmtree(tombstone, ignore_errors=True)


def check_files(files: Mapping[str, str]) -> None:
    """The store's own guard (path safety only); the service validates the policy itself."""
    if not files:
        raise InvalidPolicyFiles("A policy needs at least one file.")
    for name, text in files.items():
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            raise InvalidPolicyFiles(f"Invalid file name {name!r}: use letters, digits, '_', '.', '-', no folders.")
        if not isinstance(text, str):
            raise InvalidPolicyFiles(f"File '{name}' must be text.")


def check_policy_id(policy_id: str) -> str:
    if not isinstance(policy_id, str) or not POLICY_ID.fullmatch(policy_id):
        raise InvalidPolicyId(f"Invalid policy id {policy_id!r}: use 1-64 lowercase letters, digits, '_' or '-', "
                              "starting with a letter or digit.")
    return policy_id


# --- the store ------------------------------------------------------------------------------------------------

class PolicyStore:
    """All policies under ``root``. Thread- and process-safe; calls block on disk: run them off the event loop.
    Read-only, it creates nothing, takes no lock and refuses every change (ReadOnlyStore)."""

    def __init__(self, root: Path | str, *, default_dir: Path | None = None, seed_default: bool = True,
                 read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only
        if read_only:
            self._require_default()
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if seed_default:
            self._seed_default(default_dir)

    def _require_default(self) -> None:
        if (self.root / DEFAULT_POLICY_ID / POINTER_FILE).is_file():
            return
        found = "holds no" if self.root.is_dir() else "does not exist, so it has no"
        raise DefaultPolicyMissing(
            f"The guardrails policy folder {self.root} {found} '{DEFAULT_POLICY_ID}' policy, and this replica opens "
            "it read-only, so it cannot write one: point it at the folder the writer replica seeds, and start the "
            "writer (the one that is not read-only) first.")

    def require_writable(self) -> None:
        """The one read-only check: every change passes here before it touches anything."""
        if self.read_only:
            raise ReadOnlyStore(f"The policy store at {self.root} is read-only.")

    def _seed_default(self, default_dir: Path | None) -> None:
        if (self.root / DEFAULT_POLICY_ID / POINTER_FILE).is_file():
            return
        from nimrag.guardrails.runtime import DEFAULT_POLICY_DIR, read_policy_dir  # NeMo is loaded only when seeding

        files = read_policy_dir(default_dir or DEFAULT_POLICY_DIR)
        with contextlib.suppress(PolicyExists):  # another process seeded it meanwhile
            self.create(DEFAULT_POLICY_ID, files, comment="built-in default policy", author="nimrag")

    # --- paths and locking --------------------------------------------------------------------------------------
    def _dir(self, policy_id: str) -> Path:
        return self.root / check_policy_id(policy_id)

    @contextlib.contextmanager
    def _writing(self, policy_id: str) -> Iterator[Path]:
        """The policy's folder, under the exclusive lock, with what dead writers left behind removed."""
        self.require_writable()
        folder = self._dir(policy_id)
        with open(self.root / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._clean_up(folder)
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _clean_up(self, folder: Path) -> None:
        for leftover in self.root.glob(f"{DELETED_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if not folder.is_dir():
            return
        for staging in folder.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(staging, ignore_errors=True)
        current = self._read_pointer(folder)
        for version in self._version_numbers(folder):
            if current is None or version > current:  # renamed into place, but its writer died before the pointer
                _remove_tree(folder / str(version), self.root)

    # --- reading ------------------------------------------------------------------------------------------------
    @staticmethod
    def _read_pointer(folder: Path) -> int | None:
        try:
            return int(json.loads((folder / POINTER_FILE).read_bytes())["version"])
        except FileNotFoundError:
            return None

    @staticmethod
    def _version_numbers(folder: Path) -> list[int]:
        try:
            return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        except FileNotFoundError:
            return []

    @staticmethod
    def _retired_version(folder: Path) -> int:
        try:
            return int(json.loads((folder / RETIRED_FILE).read_bytes())["last_version"])
        except FileNotFoundError:
            return 0

    def current_version(self, policy_id: str) -> int:
        """One read of a 50-byte file (tens of microseconds): cheap enough for every request. Not cached on stat
        data: inode numbers are reused and timestamps are coarse, so a stat can miss a move."""
        version = self._read_pointer(self._dir(policy_id))
        if version is None:
            raise PolicyNotFound(f"Policy '{policy_id}' does not exist.")
        return version

    def exists(self, policy_id: str) -> bool:
        return (self._dir(policy_id) / POINTER_FILE).is_file()

    def _info(self, policy_id: str, version: int) -> VersionInfo:
        try:
            meta = json.loads((self._dir(policy_id) / str(version) / META_FILE).read_bytes())
        except FileNotFoundError:
            raise VersionNotFound(f"Policy '{policy_id}' has no version {version}.") from None
        return VersionInfo(**meta)

    def files(self, policy_id: str, version: int) -> dict[str, str]:
        """The files of one version (immutable: safe to cache by version)."""
        folder = self._dir(policy_id) / str(version) / FILES_DIR
        try:
            return {p.name: p.read_bytes().decode("utf-8") for p in sorted(folder.iterdir())}
        except FileNotFoundError:
            raise VersionNotFound(f"Policy '{policy_id}' has no version {version}.") from None

    def get(self, policy_id: str, version: int | None = None) -> Policy:
        current = self.current_version(policy_id)
        wanted = current if version is None else version
        if wanted > current:  # a version above the pointer belongs to a writer that died
            raise VersionNotFound(f"Policy '{policy_id}' has no version {wanted}; the current one is {current}.")
        return Policy(policy_id, self._info(policy_id, wanted), self.files(policy_id, wanted), current)

    def list(self) -> list[PolicySummary]:
        summaries = []
        for folder in sorted(self.root.iterdir()):
            if not POLICY_ID.fullmatch(folder.name):
                continue
            with contextlib.suppress(PolicyNotFound, VersionNotFound, FileNotFoundError):  # deleted while we looked
                info = self._info(folder.name, self.current_version(folder.name))
                summaries.append(PolicySummary(folder.name, info.version, info.created, info.description))
        return summaries

    def history(self, policy_id: str) -> list[VersionInfo]:
        """Every version up to the current one, oldest first."""
        current = self.current_version(policy_id)
        versions = [v for v in self._version_numbers(self._dir(policy_id)) if v <= current]
        return [self._info(policy_id, v) for v in versions]

    def diff(self, policy_id: str, from_version: int | None = None, to_version: int | None = None) -> PolicyDiff:
        """A unified diff per file that differs (added and removed files diff against nothing); by default the
        current version against the one before it."""
        to_version = to_version or self.current_version(policy_id)
        if from_version is None:
            earlier = [v for v in self._version_numbers(self._dir(policy_id)) if v < to_version]
            from_version = earlier[-1] if earlier else to_version
        old = self.get(policy_id, from_version).files
        new = self.get(policy_id, to_version).files
        diffs = {}
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) == new.get(name):
                continue
            before, after = old.get(name, ""), new.get(name, "")
            diffs[name] = "".join(difflib.unified_diff(
                before.splitlines(keepends=True), after.splitlines(keepends=True),
                fromfile=f"{policy_id}@{from_version}/{name}" if name in old else "/dev/null",
                tofile=f"{policy_id}@{to_version}/{name}" if name in new else "/dev/null"))
        return PolicyDiff(from_version, to_version, diffs)

    # --- writing ------------------------------------------------------------------------------------------------
    def create(self, policy_id: str, files: Mapping[str, str], comment: str = "", author: str = "") -> VersionInfo:
        check_files(files)
        with self._writing(policy_id) as folder:
            if folder.is_dir() and self._read_pointer(folder) is not None:
                raise PolicyExists(f"Policy '{policy_id}' already exists; update it instead.")
            folder.mkdir(exist_ok=True)
            return self._write_version(folder, self._retired_version(folder) + 1, files, comment, author)

    def update(self, policy_id: str, files: Mapping[str, str], expected_version: int | None = None,
               comment: str = "", author: str = "", rollback_of: int | None = None) -> VersionInfo:
        """A new current version with these files. When ``expected_version`` is given and the policy has moved
        on, nothing is written (VersionConflict). Files identical to the current ones write nothing either."""
        check_files(files)
        with self._writing(policy_id) as folder:
            current = self._read_pointer(folder) if folder.is_dir() else None
            if current is None:
                raise PolicyNotFound(f"Policy '{policy_id}' does not exist.")
            if expected_version is not None and expected_version != current:
                raise VersionConflict(policy_id, expected_version, current)
            info = self._info(policy_id, current)
            if info.sha256 == policy_sha256(files):
                return info
            return self._write_version(folder, current + 1, files, comment, author, rollback_of)

    def rollback(self, policy_id: str, version: int, expected_version: int | None = None, comment: str = "",
                 author: str = "") -> VersionInfo:
        """A NEW version holding the files of ``version``: history only grows."""
        old = self.get(policy_id, version).files
        return self.update(policy_id, old, expected_version, comment or f"rollback to version {version}", author,
                           rollback_of=version)

    def delete(self, policy_id: str) -> None:
        """The pointer goes first (the policy is gone at once), then its versions; the last number stays."""
        self.require_writable()
        if policy_id == DEFAULT_POLICY_ID:
            raise ProtectedPolicy(f"The '{DEFAULT_POLICY_ID}' policy cannot be deleted; update it instead.")
        with self._writing(policy_id) as folder:
            current = self._read_pointer(folder) if folder.is_dir() else None
            if current is None:
                raise PolicyNotFound(f"Policy '{policy_id}' does not exist.")
            write_atomically(folder / RETIRED_FILE, json.dumps({"last_version": current}).encode())
            (folder / POINTER_FILE).unlink()
            fsync_dir(folder)
            for version in self._version_numbers(folder):
                _remove_tree(folder / str(version), self.root)

    def _write_version(self, folder: Path, version: int, files: Mapping[str, str], comment: str, author: str,
                       rollback_of: int | None = None) -> VersionInfo:
        """Stage, fsync, rename into place, then move the pointer (the commit point). Caller holds the lock."""
        info = VersionInfo(version, _now(), author, comment, policy_sha256(files), policy_description(files),
                           rollback_of)
        staging = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        (staging / FILES_DIR).mkdir(parents=True)
        try:
            for name, text in files.items():
                write_synced(staging / FILES_DIR / name, text.encode("utf-8"))
            write_synced(staging / META_FILE, json.dumps(info.as_dict(), indent=1).encode())
            fsync_dir(staging / FILES_DIR)
            fsync_dir(staging)
            os.rename(staging, folder / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(folder)
        write_atomically(folder / POINTER_FILE, json.dumps({"version": version, "sha256": info.sha256}).encode())
        return info
