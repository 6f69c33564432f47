"""scripts/make_wheel_bundle.sh for real: the bundle, built from PyPI for this Python, installs offline into a fresh
venv that holds only torch (and what torch itself needs), and the quick CPU self-check passes there with every
row it must have (selfcheck_expectations.py; the suite's one run of it).

Slow and networked: it downloads the bundle (about 90 MiB) and builds deepspeed's wheel. PATCHES_WHEELS=folder
uses a bundle built before instead (the script's OUT)."""
from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from launch_helpers import ROOT
from selfcheck_expectations import check_quick_cpu_report

pytestmark = pytest.mark.slow

# What the bundle must bring on a node with torch alone: pyproject.toml's dependencies besides torch, and deepspeed.


def project_dependencies() -> list[str]:
    """pyproject.toml's [project] dependencies (tomllib is Python 3.11 and later)."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
        return tomllib.loads(text)["project"]["dependencies"]
    except ImportError:
        return re.findall(r'"([^"]+)"', text.split("\ndependencies = [", 1)[1].split("]", 1)[0])


PACKAGES = [Requirement(r).name for r in project_dependencies() if Requirement(r).name != "torch"] + ["deepspeed"]
# Importable only once the bundle is installed: none of them may come with torch.
NOT_WITH_TORCH = ["numpy", "packaging", "tqdm", "google.protobuf", "yaml", "PIL", "timm", "einops", "safetensors",
                  "av", "decord", "tensorboardX", "torchvision", "deepspeed", "pydantic", "huggingface_hub"]


def torch_closure() -> set[str]:
    """torch and what it needs, as installed here (markers of this Python, extras followed: cuda-toolkit[cudart])."""
    extras_of: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        if name in extras_of and extras <= extras_of[name]:
            continue
        extras_of.setdefault(name, set()).update(extras)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in {"", *extras_of[name]}):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return set(extras_of)


def torch_only_site(folder: Path) -> None:
    """``folder`` holds links to torch and its own dependencies in this Python's site-packages, nothing else."""
    folder.mkdir()
    for name in torch_closure():
        dist = metadata.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)


def clean_env(**more: str) -> dict[str, str]:
    """No PYTHONPATH (this checkout's patches) and no pip configuration (its find-links hold wheels too)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    return dict(env, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", **more)


def run(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def copy_checkout(dst: Path) -> Path:
    """The tracked files of this checkout (the self-check runs the entry scripts beside the package)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in filter(None, tracked.stdout.split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


def test_the_bundle_installs_offline_next_to_torch_alone_and_the_quick_selfcheck_passes(tmp_path):
    # The venv's deepspeed builds its C++ ops (shm comm) into a folder of its own: in the shared
    # ~/.cache/torch_extensions its build would replace the one this Python's deepspeed tests use, which would
    # then build again (waiting on each other's lock when pytest -n 2 runs them side by side).
    checkout = copy_checkout(tmp_path / "checkout")
    wheels = Path(os.environ["PATCHES_WHEELS"]) if os.environ.get("PATCHES_WHEELS") else tmp_path / "wheels"
    if not os.environ.get("PATCHES_WHEELS"):
        built = run(["bash", str(checkout / "scripts" / "make_wheel_bundle.sh")], timeout=900,
                    env=dict(os.environ, PYTHON=sys.executable, OUT=str(wheels),
                             PYTHON_VERSION=f"{sys.version_info.major}.{sys.version_info.minor}"))
        print(built.stdout[-3000:])

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=300, env=clean_env())
    python = str(venv / "bin" / "python")
    # The venv's own setuptools (3.11's ensurepip brings one) would hide torch's, which builds the package below.
    run([python, "-m", "pip", "uninstall", "-y", "setuptools"], timeout=120, env=clean_env())
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=60).stdout.strip()
    torch_only_site(tmp_path / "torch_only")
    Path(site, "torch_only.pth").write_text(f"{tmp_path / 'torch_only'}\n")
    probe = ("import importlib.util, torch\n"
             "def found(name):\n"
             "    try:\n"
             "        return importlib.util.find_spec(name) is not None\n"
             "    except ModuleNotFoundError:\n"
             "        return False\n"
             f"print(torch.__version__, [n for n in {NOT_WITH_TORCH!r} if found(n)])")
    assert run([python, "-c", probe], timeout=300, env=clean_env()).stdout.split()[1:] == ["[]"]

    installed = run([python, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *PACKAGES],
                    timeout=900, env=clean_env())
    print(installed.stdout[-2000:])
    run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-e", str(checkout)],
        timeout=600, env=clean_env())
    run([python, "-m", "pip", "check"], timeout=120, env=clean_env())

    check = subprocess.run([python, str(checkout / "scripts" / "selfcheck.py"), "--quick", "--device", "cpu",
                            "--output_dir", "report"], capture_output=True, text=True, cwd=tmp_path, timeout=1800,
                           env=clean_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions")))
    report_file = tmp_path / "report" / "selfcheck.json"
    assert report_file.exists(), check.stdout[-4000:] + check.stderr[-4000:]
    report = json.loads(report_file.read_text())
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert check.returncode == 0 and report["passed"] and not failed, (failed, check.stdout[-4000:])
    print((tmp_path / "report" / "selfcheck.md").read_text())
    check_quick_cpu_report(tmp_path / "report", check.stdout)
