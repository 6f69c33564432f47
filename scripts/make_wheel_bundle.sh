#!/usr/bin/env bash
# Wheels of everything PATCHES needs besides torch, made on a networked machine, for one offline install on a node
# whose Python already has torch.
#
#   scripts/make_wheel_bundle.sh                     # Python 3.12, manylinux x86_64 (glibc >= 2.28), into wheels/
#   PYTHON_VERSION=3.11 OUT=bundle scripts/make_wheel_bundle.sh av decord
#   NODE_HAS="numpy pillow torchvision timm" scripts/make_wheel_bundle.sh     # leave out what the node has
#
# Arguments: the packages to install on the node (default: pyproject.toml's dependencies besides torch, and
# deepspeed). The bundle holds them and everything they need, at the versions installed here, which pip resolved
# together (install requirements.txt here first): the dependencies are read from the installed packages' metadata,
# with the markers of the node's Python (PYTHON_VERSION, Linux x86_64). Left out: torch and what torch itself needs
# (its CUDA wheels, triton, sympy, jinja2, ...), which come with the node's torch, and NODE_HAS (packages the node
# has, with what only they need). typing-extensions is bundled all the same: torch's floor is older than the one
# the pinned pydantic needs. torchvision requires the torch it was built for (2.15 here): for a node with another
# torch, give its own torchvision in NODE_HAS.
# deepspeed has no wheel on PyPI: it is built here with `pip wheel --no-deps` and DS_BUILD_OPS=0 (pure Python;
# its CUDA ops are built just in time on the node when used, which needs no network). Fails if the bundle exceeds
# MAX_MIB (100; the full set is about 93 MiB: PyAV 34, numpy 16, decord 13, torchvision 7, Pillow 7; where less
# may travel, e.g. 64 MiB, NODE_HAS leaves out what the node has). The script ends by printing the install line:
#
#   pip install --no-index --find-links wheels torchvision timm einops numpy av decord tensorboardX safetensors \
#     tqdm deepspeed
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
# manylinux_2_28 too: PyAV 14 and later publish only those (glibc 2.28: RHEL/Rocky 8, Ubuntu 20.04 and later)
PLATFORMS=${PLATFORMS:-manylinux2014_x86_64 manylinux_2_28_x86_64}
OUT=${OUT:-wheels}
MAX_MIB=${MAX_MIB:-100}
NODE_HAS=${NODE_HAS:-}
if [ $# -gt 0 ]; then
  packages=("$@")
else
  packages=(torchvision timm einops numpy av decord tensorboardX safetensors tqdm deepspeed)
fi

# "name==version" for each package to bundle: the arguments and their dependencies, as installed here.
pins=$("$PYTHON" - "$PYTHON_VERSION" "$NODE_HAS" "${packages[@]}" <<'EOF'
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

python_version, node_has, roots = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
node = {"python_version": python_version, "python_full_version": python_version + ".0", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": "",
        "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements(name):
    try:
        found = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        sys.exit(f"error: {name} is not installed here: install requirements.txt first (the bundle takes the "
                 f"versions installed here)")
    return [Requirement(line) for line in found]


def closure(names, stop):
    """The packages ``names`` need, extras followed (torch needs cuda-toolkit[cudart, ...]), never through ``stop``."""
    extras_of, todo = {}, [(canonicalize_name(n), frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        if name in stop or (name in extras_of and extras <= extras_of[name]):
            continue
        extras_of.setdefault(name, set()).update(extras)
        for requirement in requirements(name):
            if requirement.marker is None or any(requirement.marker.evaluate(dict(node, extra=extra))
                                                 for extra in {"", *extras_of[name]}):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return set(extras_of)


with_torch = closure(["torch"], set()) - {"typing-extensions"}
for name in sorted(closure(roots, with_torch | {canonicalize_name(n) for n in node_has})):
    print(f"{name}=={metadata.version(name)}")
EOF
)
mkdir -p "$OUT"
binary=()
deepspeed=
for pin in $pins; do
  if [ "${pin%%==*}" = deepspeed ]; then deepspeed=$pin; else binary+=("$pin"); fi
done
if [ -n "$deepspeed" ]; then
  echo "building $deepspeed (DS_BUILD_OPS=0: no compiled ops)"
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" "$deepspeed"
fi
platform_flags=()
for p in $PLATFORMS; do platform_flags+=(--platform "$p"); done
echo "downloading ${#binary[@]} packages for Python $PYTHON_VERSION on $PLATFORMS: ${binary[*]}"
# --no-deps: the dependencies are named above; resolving them here would pull torch and CUDA (gigabytes)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  "${platform_flags[@]}" -d "$OUT" "${binary[@]}"

total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
ls -l "$OUT"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $9}'
awk -v t="$total" -v m="$MAX_MIB" -v d="$OUT" 'BEGIN {
  printf "%s: %.1f MiB in all (limit %d MiB)\n", d, t / 1048576, m; exit (t > m * 1048576) }' || {
  echo "error: the bundle is over ${MAX_MIB} MiB: leave out what the node has (NODE_HAS), bundle fewer packages" \
       "(arguments) or raise MAX_MIB" >&2; exit 1; }
install=()
for name in "${packages[@]}"; do
  [[ " $NODE_HAS " == *" $name "* ]] || install+=("$name")
done
echo "on the node: pip install --no-index --find-links $OUT ${install[*]}"
