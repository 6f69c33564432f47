"""The CPU allocator settings of cpu_memory.py, checked in fresh interpreters (they act at process start)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Whether glibc serves a fresh allocation from its own mapping: mallinfo2's hblkhd (bytes in mmapped chunks)
# grows exactly when it does.
PROBE = """
import ctypes, json, sys
{imports}
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
def mapped(nbytes):
    before = libc.mallinfo2().hblkhd
    ptr = libc.malloc(nbytes)
    grew = libc.mallinfo2().hblkhd > before
    libc.free(ctypes.c_void_p(ptr))
    return grew
import os
print(json.dumps({{"small_mapped": mapped(4 << 20), "large_mapped": mapped(24 << 20),
                   "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"), "mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_")}}))
"""


def run_probe(imports: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_", "PATCHES_CPU_ALLOCATOR")}
    return subprocess.run([sys.executable, "-W", "error", "-c", PROBE.format(imports=imports)],
                          cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True)


def probe(imports: str, env: dict[str, str] | None = None) -> dict:
    out = run_probe(imports, env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings are Linux-only")
def test_glibc_default_maps_a_4mb_buffer_and_cpu_memory_keeps_it_in_the_heap() -> None:
    default = probe("")
    assert default["small_mapped"] and default["large_mapped"] and default["thp"] is None
    tuned = probe("import patches.utils.cpu_memory")
    assert not tuned["small_mapped"], "buffers under 16 MB come from the heap"
    assert tuned["large_mapped"], "buffers over 16 MB get their own mapping, returned to the system when freed"
    assert tuned["thp"] == "1" and tuned["mmap"] == str(16 << 20)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings are Linux-only")
def test_user_choices_win() -> None:
    off = probe("import patches.utils.cpu_memory", {"PATCHES_CPU_ALLOCATOR": "default"})
    assert off["small_mapped"] and off["thp"] is None and off["mmap"] is None
    own = probe("import patches.utils.cpu_memory", {"THP_MEM_ALLOC_ENABLE": "0"})
    assert own["thp"] == "0" and not own["small_mapped"]
    explicit = probe("import patches.utils.cpu_memory", {"PATCHES_CPU_ALLOCATOR": "tuned"})
    assert explicit["thp"] == "1" and not explicit["small_mapped"]


@pytest.mark.slow
def test_a_misspelt_choice_is_refused_by_name() -> None:
    out = run_probe("import patches.utils.cpu_memory", {"PATCHES_CPU_ALLOCATOR": "defualt"})
    assert out.returncode != 0 and "PATCHES_CPU_ALLOCATOR='defualt'" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["run_mae_pretraining", "run_class_finetuning", "run_demo"])
def test_entry_scripts_apply_the_settings_before_torch_is_imported(entry: str) -> None:
    # -W error turns cpu_memory's warning (imported after torch) into a failure of the subprocess
    result = probe(f"import {entry}")
    assert result["thp"] == "1" and not result["small_mapped"]


@pytest.mark.slow
def test_importing_after_torch_warns() -> None:
    out = subprocess.run([sys.executable, "-c", "import torch, patches.utils.cpu_memory"], cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"})
    assert out.returncode == 0 and "imported after torch" in out.stderr
