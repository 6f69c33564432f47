"""Using a trained encoder as it is: its checkpoint's model and grid, the videos to read, every view of a
video, and its features or class scores. Shared by extract_features.py, run_inference.py and the probes.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from patches.checkpoints.reading import checkpoint_fingerprint
from patches.data.clip_sampling import segment_clip_indices
from patches.data.recipe_rate import file_sampling_rate
from patches.data.transforms import EvalTransform
from patches.data.video_reader import FrameFolder, VideoDecodeError, VideoFile, decode_clips
from patches.grid import PatchGrid
from patches.utils.devices import amp_autocast
from patches.utils.distributed import get_rank, get_world_size, is_dist

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
GRID_FLAGS = ("input_size", "patch_size", "num_frames", "tubelet_size")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def encoder_reference(path: str | Path) -> dict[str, str]:
    """What a probe checkpoint or a feature folder records of the encoder it used."""
    return {"path": str(Path(path).resolve()), "sha256": checkpoint_fingerprint(path)}


def head_classes(ckpt: dict[str, Any]) -> int:
    """The class count of a checkpoint's classification head (0 when it has none); VideoMAE's fine-tuned files
    keep their weights under "module"."""
    head = (ckpt.get("model") or ckpt.get("module") or {}).get("head.weight")
    return int(head.shape[0]) if head is not None else 0


# ---------------------------------------------------------------- what to read

@dataclass(frozen=True)
class VideoSource:
    """One input: a video file, or (``num_frames`` set) a folder of frames; ``label`` when a list gave one."""

    path: str
    label: int | None = None
    num_frames: int | None = None

    def open(self, fname_tmpl: str = "img_{:05}.jpg") -> VideoFile | FrameFolder:
        if self.num_frames is None:
            return VideoFile(self.path)
        return FrameFolder(self.path, self.num_frames, fname_tmpl)


def _frame_folder(folder: Path) -> VideoSource | None:
    frames = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS]
    return VideoSource(str(folder), None, len(frames)) if frames else None


def find_videos(inputs: Sequence[str], data_root: str | None = None) -> list[VideoSource]:
    """The videos that ``inputs`` name: video files, list files (``path [label]`` or VideoMAE's ``folder
    num_frames label`` lines), folders of videos, or folders of frame folders. ValueError naming a bad input."""
    from patches.data.lists import numbered_list_entries
    found: list[VideoSource] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            frames = _frame_folder(path)
            children = sorted(path.iterdir())
            videos = [VideoSource(str(p)) for p in children if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
            folders = [s for s in (_frame_folder(p) for p in children if p.is_dir()) if s is not None]
            if not (videos or folders or frames):
                raise ValueError(f"{path} holds no videos ({', '.join(VIDEO_EXTENSIONS)}) and no frame folders")
            found += videos + folders if (videos or folders) else [frames]
        elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(VideoSource(str(path)))
        elif path.is_file():
            for _, video, label in numbered_list_entries(path, data_root):
                head, _, count = video.rpartition(" ")
                if count.isdigit() and Path(head).is_dir():  # VideoMAE's "folder num_frames label" line
                    found.append(VideoSource(head, label, int(count)))
                elif Path(video).is_dir():
                    frames = _frame_folder(Path(video))
                    found.append(VideoSource(video, label, frames.num_frames if frames else 0))
                else:
                    found.append(VideoSource(video, label))
        else:
            raise ValueError(f"{path} does not exist")
    return found


class VideoViews(Dataset):
    """Item i: ``(views [V, C, T, H, W], i, "")`` with V = ``num_segments`` x ``num_crops`` test views of
    video i (as the fine-tuning test takes them), or ``(None, i, reason)`` when it cannot be read."""

    def __init__(self, videos: Sequence[VideoSource], grid: PatchGrid, sampling_rate: int, num_segments: int = 1,
                 num_crops: int = 1, short_side: int | None = None, fname_tmpl: str = "img_{:05}.jpg") -> None:
        self.videos, self.grid, self.sampling_rate = list(videos), grid, sampling_rate
        self.num_segments, self.num_crops, self.fname_tmpl = num_segments, num_crops, fname_tmpl
        self.transform = EvalTransform(grid.input_size, short_side, num_crops)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            source = self.videos[index].open(self.fname_tmpl)
            picks = segment_clip_indices(len(source), self.grid.num_frames,
                                         file_sampling_rate(self.sampling_rate, source), self.num_segments)
            clips = decode_clips(source, list(picks))
        except (VideoDecodeError, OSError, ValueError) as e:
            return None, index, str(e)
        return torch.stack([v for clip in clips for v in self.transform(clip)]), index, ""


def collate_views(items: list) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Readable videos' views stacked [B, V, ...], their indices, and (index, reason) of the unreadable ones."""
    good = [(views, i) for views, i, _ in items if views is not None]
    bad = [(i, reason) for views, i, reason in items if views is None]
    stacked = torch.stack([v for v, _ in good]) if good else None
    return stacked, [i for _, i in good], bad


@torch.no_grad()
def encode_views(model: torch.nn.Module, views: torch.Tensor, amp_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Views [B, V, C, T, H, W] -> (pooled [B, V, D], tokens [B, V, N, D]) in float32."""
    pass  # MOVE-REMOVED-IMPORT
    b, v = views.shape[:2]
    device = next(model.parameters()).device
    with amp_autocast(device, amp_dtype):
        tokens = model.encode_tokens(views.flatten(0, 1).to(device))
        pooled = model.pool(tokens)
    return pooled.float().view(b, v, -1), tokens.float().view(b, v, *tokens.shape[1:])


def read_class_names(classes_file: str | None, ckpt: dict[str, Any], path: str) -> list[str] | None:
    """Class names from ``classes_file`` (one per line), else the checkpoint's ``class_names``, else a
    transformers folder's ``id2label`` (placeholder ``LABEL_N`` names do not count)."""
    if classes_file:
        return [line.strip() for line in Path(classes_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if isinstance(ckpt.get("class_names"), list):
        return [str(n) for n in ckpt["class_names"]]
    config = Path(path) / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label") or {}
        names = [id2label[k] for k in sorted(id2label, key=int)]
        if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            return names
    return None


# ---------------------------------------------------------------- feature folders: key, shards, index

FEATURES_KEY, INDEX = "features.json", "index.json"


def inputs_digest(videos: Sequence[VideoSource]) -> str:
    """SHA-256 of the ordered video paths: shards are positional, so a folder holds one input list's."""
    return hashlib.sha256("\n".join(v.path for v in videos).encode()).hexdigest()


def check_feature_folder(folder: Path, key: dict[str, Any]) -> None:
    """ValueError naming ``folder`` when it holds features made otherwise than ``key`` says (another
    checkpoint, model, grid, views, input list or layout); the encoder's path alone may differ."""
    existing = folder / FEATURES_KEY
    if not existing.is_file():
        if any(folder.glob("shard-*")):
            raise ValueError(f"--output_dir {folder} holds feature shards but no {FEATURES_KEY} saying how they "
                             f"were made; use another folder")
        return
    theirs = json.loads(existing.read_text())
    names = {"encoder": "checkpoint", "grid": "grid", "model": "model"}
    differ = [k for k in key if k != "encoder" and theirs.get(k) != key[k]]
    if theirs.get("encoder", {}).get("sha256") != key["encoder"]["sha256"]:
        differ.insert(0, "encoder")
    if differ:
        what = ", ".join(f"{names.get(k, k)} ({theirs.get(k, {}).get('path') if k == 'encoder' else theirs.get(k)} "
                         f"there)" for k in differ)
        raise ValueError(f"--output_dir {folder} holds features from another {what}; give another --output_dir, or "
                         f"empty this one")


def shard_done(folder: Path, number: int) -> bool:
    """A shard is finished when its record is written (after its arrays)."""
    return (folder / f"shard-{number:05d}.json").is_file()


# A rank that has finished its shards waits for the others' (a rerun's leftovers, or one slow shard of 1000 videos
# decoded from a network filesystem): this wait must outlast any such work, unlike the process group's timeout.
PATIENT_TIMEOUT = datetime.timedelta(days=30)


def patient_group() -> Any:
    """A gloo group of every rank whose collectives wait as long as the slowest rank's shards take; None alone."""
    return dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT) if is_dist() else None


def shards_left(folder: Path, shards: int, group: Any) -> list[int]:
    """The unfinished shards as rank 0 sees them (after clearing an interrupted run's files), the same list on
    every rank: the ranks share what is left of a rerun evenly rather than each redoing its own first-run shards."""
    left = [n for n in range(shards) if not shard_done(folder, n)] if get_rank() == 0 else None
    if group is None:
        return left or []
    box = [left]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def share_of_shards(left: Sequence[int]) -> list[int]:
    """This rank's share of the shards ``left``: every world-size-th, so shares differ by at most one shard."""
    return list(left[get_rank()::get_world_size()])


def write_shard(folder: Path, number: int, arrays: dict[str, np.ndarray], record: dict[str, Any], fmt: str) -> None:
    """The shard's arrays (one safetensors file, or one .npy per array), then its JSON record; all atomic."""
    from patches.utils.files import write_atomically
    base = f"shard-{number:05d}"
    if fmt == "safetensors":
        from safetensors.numpy import save_file
        record["files"] = [f"{base}.safetensors"]
        write_atomically(folder / record["files"][0], lambda tmp: save_file(arrays, str(tmp)))
    else:
        record["files"] = [f"{base}.{name}.npy" for name in arrays]
        for file, array in zip(record["files"], arrays.values()):
            write_atomically(folder / file, lambda tmp: _save_npy(tmp, array))
    write_atomically(folder / f"{base}.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1)))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def write_index(folder: Path, key: dict[str, Any], shards: int) -> dict[str, Any]:
    """``index.json``: how the features were made, then per shard its files and videos, and the unreadable."""
    records = [json.loads((folder / f"shard-{n:05d}.json").read_text()) for n in range(shards)]
    index = {**key, "videos": sum(len(r["videos"]) for r in records),
             "unreadable": [u for r in records for u in r["unreadable"]],
             "shards": [{"files": r["files"], "videos": r["videos"], "labels": r["labels"]} for r in records]}
    from patches.utils.files import write_atomically
    write_atomically(folder / INDEX, lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    return index
