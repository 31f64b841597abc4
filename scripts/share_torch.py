"""Hard-link the torch stack of one virtual environment into another (same file system).

The MONAI Label environment needs the same torch 2.14.1 as the core one, whose Linux wheels bring ~5.4 GB of
CUDA libraries; a second copy can fill a CI machine's disk. Hard links cost no space, and pip never edits an
installed file in place (it removes and rewrites), so neither environment can change the other's files.
The linked distributions keep their ``dist-info``, so pip in the target sees them installed and only adds
their small pure-Python dependencies. Files outside ``site-packages`` (console scripts) are not linked.

Usage: ``python share_torch.py SOURCE_SITE_PACKAGES TARGET_SITE_PACKAGES``; exits 0 when linked, 1 (having
removed every link it made) when the two are on different file systems or the source lacks torch.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import Distribution, distributions
from pathlib import Path

# torch, torchvision and the CUDA stack they pull: the distributions worth sharing (~5.4 GB of them)
SHARED_NAMES = ("torch", "torchvision", "triton")
SHARED_PREFIXES = ("nvidia-", "cuda-")


def is_shared(dist: Distribution) -> bool:
    name = dist.metadata["Name"].lower().replace("_", "-")
    return name in SHARED_NAMES or name.startswith(SHARED_PREFIXES)


def files_to_link(source: Path) -> list[Path]:
    """Paths, relative to ``source``, of every installed file of the shared distributions."""
    dists = [d for d in distributions(path=[str(source)]) if is_shared(d)]
    if not any(d.metadata["Name"].lower() == "torch" for d in dists):
        raise FileNotFoundError(f"no torch distribution in {source}")
    relative = []
    for dist in dists:
        for file in dist.files or ():
            path = Path(file)
            if ".." in path.parts or not (source / path).is_file():
                continue
            relative.append(path)
    return relative


def link_all(source: Path, target: Path) -> int:
    """Link each file; on any failure remove the links made so far and re-raise. Returns the count."""
    made: list[Path] = []
    try:
        for path in files_to_link(source):
            dest = target / path
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(source / path, dest)
            made.append(dest)
    except BaseException:
        for dest in made:
            dest.unlink(missing_ok=True)
        raise
    return len(made)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    try:
        count = link_all(source, target)
    except OSError as err:
        print(f"torch not shared from {source} ({err}); it will be installed", file=sys.stderr)
        return 1
    print(f"torch stack shared from {source}: {count} files hard-linked")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
