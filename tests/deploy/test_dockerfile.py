"""deploy/docker/Dockerfile read by BuildKit's parser (no Docker engine here: it is not built): both kinds come from one
recipe, the CPU one's torch from the CPU index and the GPU one on NVIDIA's CUDA runtime with the gpu extra, the
dependencies install before the source is copied, everything copied is in the build context, and the image runs
as a non-root user with its folders in place."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch

import dockerfile
import pytest

from tests.conftest import REPO
from tests.deploy import service_facts as facts
from tests.deploy.compose_cli import DOCKERFILE

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
REQUIREMENTS_SCRIPT = REPO / "deploy/docker/pyproject_requirements.py"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[dockerfile.Command] = field(default_factory=list)

    def values(self, instruction: str) -> list[tuple[str, ...]]:
        return [c.value for c in self.instructions if c.cmd == instruction]

    def runs(self) -> list[str]:
        return [v[0] for v in self.values("RUN")]

    def env(self) -> dict[str, str]:
        pairs = [item for v in self.values("ENV") for item in v]
        return dict(zip(pairs[::2], pairs[1::2], strict=True))


def parse(path) -> tuple[list[str], list[Stage]]:
    """(global ARGs, stages) of a Dockerfile, read by BuildKit's own parser (the dockerfile package)."""
    global_args, stages = [], []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            base, _, name = (*command.value, None, None)[:3]
            stages.append(Stage(base, name))
        elif stages:
            stages[-1].instructions.append(command)
        elif command.cmd == "ARG":
            global_args += command.value
    return global_args, stages


GLOBAL_ARGS, STAGES = parse(REPO / DOCKERFILE)
BY_NAME = {s.name: s for s in STAGES}
IMAGE = STAGES[-1]


def base_of(variant: str) -> Stage:
    """The stage the image builds on for VARIANT=variant (its FROM names base-${VARIANT})."""
    return BY_NAME[IMAGE.base.replace("${VARIANT}", variant)]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_one_recipe_whose_variant_picks_only_the_base():
    assert "VARIANT=cpu" in GLOBAL_ARGS
    assert IMAGE.base == "base-${VARIANT}"
    assert [s.name for s in STAGES] == ["base-cpu", "base-gpu", "image"]
    for variant in ("cpu", "gpu"):
        assert base_of(variant).env().keys() == {"NIMRAG_IMAGE_TORCH_INDEX", "NIMRAG_IMAGE_TORCH_CUDA",
                                                 "NIMRAG_IMAGE_EXTRAS", "NIMRAG_IMAGE_FAISS"}


def test_the_gpu_image_swaps_faiss_cpu_for_a_gpu_build():
    assert base_of("cpu").env()["NIMRAG_IMAGE_FAISS"] == ""
    assert re.fullmatch(r"faiss-gpu==[\d.]+", base_of("gpu").env()["NIMRAG_IMAGE_FAISS"])
    swap = next(a for a in IMAGE.runs() if "NIMRAG_IMAGE_FAISS" in a)
    assert "pip uninstall -y faiss-cpu" in swap and 'pip install "$NIMRAG_IMAGE_FAISS"' in swap


def test_cpu_image_installs_the_cpu_build_of_torch():
    cpu = base_of("cpu")
    assert cpu.base.startswith("python:3.")
    assert cpu.env()["NIMRAG_IMAGE_TORCH_INDEX"] == CPU_TORCH_INDEX
    assert cpu.env()["NIMRAG_IMAGE_TORCH_CUDA"] == "None"  # checked at build: torch.version.cuda is None
    assert "gpu" not in cpu.env()["NIMRAG_IMAGE_EXTRAS"].split(",")
    torch_install = next(a for a in IMAGE.runs() if "torch==" in a and "--index-url" in a)
    assert '--index-url "${NIMRAG_IMAGE_TORCH_INDEX}"' in torch_install
    assert "torch.version.cuda" in torch_install and "NIMRAG_IMAGE_TORCH_CUDA" in torch_install
    assert "TORCH_VERSION=2.13.0" in GLOBAL_ARGS


def test_gpu_image_runs_on_the_cuda_runtime_with_the_gpu_extra():
    gpu = base_of("gpu")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu.base), gpu.base
    cuda_major = gpu.base.split(":")[1].split(".")[0]
    assert gpu.env()["NIMRAG_IMAGE_TORCH_CUDA"] == f"{cuda_major}."  # torch's CUDA is the base's
    assert "gpu" in gpu.env()["NIMRAG_IMAGE_EXTRAS"].split(",")
    assert set(pyproject()["optional-dependencies"]["gpu"]) >= {"onnxruntime-gpu>=1.18", "tritonclient[grpc]>=2.40"}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_extras_exist_and_the_requirements_script_lists_them(variant):
    extras = base_of(variant).env()["NIMRAG_IMAGE_EXTRAS"]
    listed = subprocess.run([sys.executable, str(REQUIREMENTS_SCRIPT), str(REPO / "pyproject.toml"), extras],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    project = pyproject()
    assert listed == project["dependencies"] + [r for e in extras.split(",")
                                                for r in project["optional-dependencies"][e]]
    assert any(line.startswith("torch") for line in listed)  # kept at the version above by the constraint


def test_requirements_script_refuses_an_unknown_extra():
    done = subprocess.run([sys.executable, str(REQUIREMENTS_SCRIPT), str(REPO / "pyproject.toml"), "gpu,nosuch"],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "nosuch" in done.stderr


def test_dependencies_install_in_their_own_layer_before_the_source():
    steps = IMAGE.instructions
    deps = next(i for i, c in enumerate(steps) if c.cmd == "RUN" and "pyproject_requirements.py" in c.value[0])
    copies = [(i, c.value) for i, c in enumerate(steps) if c.cmd == "COPY"]
    assert [v for i, v in copies if i < deps] == [("pyproject.toml", "deploy/docker/pyproject_requirements.py",
                                                   "/tmp/build/")]
    packages = {v[0] for i, v in copies if i > deps}
    assert {"nimrag", "services", "pipeline", "guardrails"} <= packages
    assert any(c.cmd == "RUN" and "pip install --no-deps ." in c.value[0] for c in steps[deps + 1:])
    assert "-c /tmp/build/constraints.txt" in steps[deps].value[0]  # the torch installed before stays


def _dockerignore() -> list[str]:
    return [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]


def test_every_copy_source_exists_and_is_in_the_build_context():
    ignored = _dockerignore()
    sources = [src for stage in STAGES for c in stage.instructions if c.cmd in ("COPY", "ADD")
               and not any(f.startswith("--from") for f in c.flags) for src in c.value[:-1]]
    assert len(sources) >= 7
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert not any(fnmatch(src, p) or fnmatch(src.split("/")[0], p) for p in ignored), f"{src} is dockerignored"
    assert ".venv" in ignored and ".git" in ignored  # the context stays small


def test_runs_as_a_non_root_user_with_its_folders_and_cache_volume():
    env = IMAGE.env()
    assert IMAGE.values("USER") == [("nim",)]
    setup = next(a for a in IMAGE.runs() if "useradd" in a)
    assert "--uid 1000 nim" in setup and "chown -R nim:nim /opt/nim" in setup
    assert '"$NIM_CACHE_PATH" "$NIMRAG_PIPELINE_DATA_PATH"' in setup
    for folder in (env["NIM_CACHE_PATH"], env["NIMRAG_PIPELINE_DATA_PATH"]):
        assert folder.startswith("/opt/nim/")
    assert IMAGE.values("VOLUME") == [(env["NIM_CACHE_PATH"],)]
    # the folder is made and chowned before VOLUME: a new volume starts as a copy of it, owned by nim
    steps = [c.value[0] if c.cmd == "RUN" else c.cmd for c in IMAGE.instructions]
    assert steps.index(setup) < steps.index("VOLUME")
    pipeline = facts.settings_from_env("pipeline", {"NIMRAG_PIPELINE_DATA_PATH": env["NIMRAG_PIPELINE_DATA_PATH"]})
    assert str(pipeline.data_path) == "/opt/nim/data"
    cache = facts.settings_from_env("embed", {"NIM_CACHE_PATH": env["NIM_CACHE_PATH"]})
    assert str(cache.cache_path) == env["NIM_CACHE_PATH"]


def test_serves_the_service_its_build_names_and_checks_its_readiness(tmp_path):
    env = IMAGE.env()
    assert env["NIMRAG_SERVICE"] == "${SERVICE}" and env["NIMRAG_SERVICE_PORT"] == "${PORT}"
    assert ("SERVICE=embed",) in IMAGE.values("ARG") and ("PORT=8001",) in IMAGE.values("ARG")
    assert facts.default_port("embed") == 8001
    assert IMAGE.values("EXPOSE") == [("${PORT}",)]
    [command] = IMAGE.values("CMD")
    assert command[:2] == ("sh", "-c") and 'nimrag serve "$NIMRAG_SERVICE"' in command[2]
    [healthcheck] = IMAGE.values("HEALTHCHECK")
    path = re.search(r"127\.0\.0\.1:%s(/[\w/]+)", healthcheck[1]).group(1)
    for service in facts.SERVICES:
        # 503 until the model is loaded (never here), then 200: healthy once it can serve
        assert facts.get_statuses(service, tmp_path / service, [path])[path] in (200, 503), (service, path)
