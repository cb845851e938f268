"""Print the requirements pyproject.toml declares, one per line: `dependencies`, then each extra named.

The image installs its dependencies from this list in a layer of their own, before the source is copied, so a
source change rebuilds only the (seconds-long) install of nimrag itself. Reading pyproject.toml directly keeps one
list of dependencies: no requirements file to keep in step, no stub package tree to fake a build of.

    python pyproject_requirements.py pyproject.toml gpu,milvus,redis > requirements.txt
"""

from __future__ import annotations

import sys

import tomllib  # Python 3.11+: the images' Python is 3.12


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {', '.join(unknown)}; pyproject.toml declares {', '.join(optional)}")
    return [*project["dependencies"], *(line for extra in extras for line in optional[extra])]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], [e.strip() for e in sys.argv[2].split(",") if e.strip()])))
