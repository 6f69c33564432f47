#!/usr/bin/env bash
# Wheels of the packages an offline GPU node lacks, made on a networked machine, for one offline install there.
#
#   scripts/make_wheel_bundle.sh                     # Python 3.12, manylinux x86_64 (glibc >= 2.28), into wheels/
#   PYTHON_VERSION=3.11 OUT=bundle scripts/make_wheel_bundle.sh av decord
#
# Arguments: the packages to bundle (default: av decord deepspeed tensorboardX, pinned as in requirements.txt).
# Their dependencies are bundled too, except what such a node comes with (torch, numpy, packaging, tqdm, einops,
# protobuf): DEPS lists them, pinned to the versions installed here, which pip resolved together.
# deepspeed has no wheel on PyPI: it is built here with `pip wheel --no-deps` and DS_BUILD_OPS=0 (pure Python;
# its CUDA ops are built just in time on the node when used, which needs no network). Fails if the bundle exceeds
# MAX_MIB (64). On the node:
#
#   pip install --no-index --find-links wheels av decord deepspeed tensorboardX
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
# manylinux_2_28 too: PyAV 14 and later publish only those (glibc 2.28: RHEL/Rocky 8, Ubuntu 20.04 and later)
PLATFORMS=${PLATFORMS:-manylinux2014_x86_64 manylinux_2_28_x86_64}
OUT=${OUT:-wheels}
MAX_MIB=${MAX_MIB:-64}
DEPS=${DEPS:-hjson msgpack ninja psutil py-cpuinfo pydantic pydantic-core annotated-types typing-inspection}
if [ $# -gt 0 ]; then packages=("$@"); else packages=(av decord deepspeed tensorboardX); fi

pinned() {  # "name==version" from requirements.txt, else the version installed here, else the bare name
  local name=$1 line version
  line=$(grep -i -E "^${name}==" requirements.txt || true)
  if [ -n "$line" ]; then echo "$line"; return; fi
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  if [ -n "$version" ]; then echo "${name}==${version}"; else echo "$name"; fi
}

mkdir -p "$OUT"
binary=()
for name in "${packages[@]}"; do
  [ "$name" = deepspeed ] || binary+=("$(pinned "$name")")
done
if [[ " ${packages[*]} " == *" deepspeed "* ]]; then
  for name in $DEPS; do binary+=("$(pinned "$name")"); done
  echo "building $(pinned deepspeed) (DS_BUILD_OPS=0: no compiled ops)"
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" "$(pinned deepspeed)"
fi
platform_flags=()
for p in $PLATFORMS; do platform_flags+=(--platform "$p"); done
echo "downloading ${binary[*]} for Python $PYTHON_VERSION on $PLATFORMS"
# --no-deps: the dependencies are named above; resolving them here would pull torch and CUDA (gigabytes)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  "${platform_flags[@]}" -d "$OUT" "${binary[@]}"

total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
ls -l "$OUT"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $9}'
awk -v t="$total" -v m="$MAX_MIB" -v d="$OUT" 'BEGIN {
  printf "%s: %.1f MiB in all (limit %d MiB)\n", d, t / 1048576, m; exit (t > m * 1048576) }' || {
  echo "error: the bundle is over ${MAX_MIB} MiB: bundle fewer packages (arguments) or raise MAX_MIB" >&2; exit 1; }
echo "on the node: pip install --no-index --find-links $OUT ${packages[*]}"
