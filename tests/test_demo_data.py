"""The demo dataset: motion-only classes, real mp4 files, list files, idempotent generation."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from patches.data import demo as demo_data
from patches.data.demo import CLASS_NAMES, ensure_demo_dataset, make_demo_dataset, render_clip, write_mp4

TINY = dict(num_frames=12, size=(32, 40))


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _assert_close_to_rendered(decoded: np.ndarray, rendered: np.ndarray) -> None:
    assert decoded.shape == rendered.shape
    # yuv420p halves chroma resolution, so colour edges blur; brightness stays close.
    assert np.abs(decoded.astype(np.int16) - rendered).mean() < 8.0
    assert np.abs(_luma(decoded) - _luma(rendered)).mean() < 3.0
    # Frame t decodes closest to rendered frame t: no dropped, duplicated or reordered frames.
    dist = np.abs(_luma(decoded)[:, None] - _luma(rendered)[None]).mean(axis=(2, 3))
    np.testing.assert_array_equal(dist.argmin(axis=1), np.arange(len(rendered)))


def _decode_all(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_eight_classes_in_four_pairs() -> None:
    assert len(CLASS_NAMES) == 8 and len(set(CLASS_NAMES)) == 8
    clip = render_clip(0, 0, **TINY)
    assert clip.dtype == np.uint8 and clip.shape == (12, 32, 40, 3)
    with pytest.raises(ValueError):
        render_clip(8, 0)


def test_frame_widths_decord_cannot_read_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decord"):
        make_demo_dataset(tmp_path, num_train=1, num_val=0, num_test=0, num_frames=2, size=(32, 48), verbose=False,
                          num_unlabeled=0)
    assert not (tmp_path / demo_data.MARKER).exists()


@pytest.mark.parametrize("pair", range(4))
def test_pairs_are_exact_time_reversals(pair: int) -> None:
    for seed in (0, 7):
        forward, backward = render_clip(2 * pair, seed, **TINY), render_clip(2 * pair + 1, seed, **TINY)
        np.testing.assert_array_equal(forward, backward[::-1])
        # Not static, and not a palindrome: the two classes really differ frame by frame.
        assert all(np.any(forward[t] != forward[t + 1]) for t in range(len(forward) - 1))
        assert all(np.any(forward[t] != backward[t]) for t in range(len(forward)))


def test_render_is_deterministic_and_seed_dependent() -> None:
    np.testing.assert_array_equal(render_clip(3, 5, **TINY), render_clip(3, 5, **TINY))
    assert np.any(render_clip(3, 5, **TINY) != render_clip(3, 6, **TINY))


def test_motion_is_large_enough_for_strided_sampling() -> None:
    clip = render_clip(0, 1, num_frames=16, size=(96, 96)).astype(np.float32)
    # Frames 4 apart (sampling rate 4) differ clearly, not by codec-noise amounts.
    assert np.abs(clip[4:] - clip[:-4]).mean() > 5.0


def _best_shift(a: np.ndarray, b: np.ndarray, r: int = 6) -> tuple[int, int]:
    """The integer (dy, dx) that best maps frame ``a`` onto frame ``b`` (b[y + dy, x + dx] ~ a[y, x])."""
    h, w = a.shape[:2]
    core = a[r:h - r, r:w - r].astype(np.float32)
    errors = {(dy, dx): np.abs(b[r + dy:h - r + dy, r + dx:w - r + dx] - core).mean()
              for dy in range(-r, r + 1) for dx in range(-r, r + 1)}
    return min(errors, key=errors.get)


@pytest.mark.parametrize("label", range(8))
def test_the_texture_moves_the_way_the_class_name_says(label: int) -> None:
    clip = render_clip(label, 3, num_frames=8, size=(64, 64)).astype(np.float32)
    dy, dx = _best_shift(clip[0], clip[4])
    name = CLASS_NAMES[label]
    assert (dx > 0) == ("right" in name) and (dx < 0) == ("left" in name), (name, dy, dx)
    assert (dy < 0) == ("up" in name) and (dy > 0) == ("down" in name), (name, dy, dx)


def test_mp4_round_trip(tmp_path: Path) -> None:
    # Every 4th frame: 4-6 px of motion between frames, well above the codec's error, so a dropped or
    # reordered frame cannot hide.
    frames = np.ascontiguousarray(render_clip(5, 2, num_frames=64, size=(64, 64))[::4])
    write_mp4(tmp_path / "clip.mp4", frames)
    _assert_close_to_rendered(_decode_all(tmp_path / "clip.mp4"), frames)


def test_write_mp4_rejects_odd_sides(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))


def _made_with(root: Path) -> dict:
    return json.loads((root / demo_data.MARKER).read_text())


def test_list_files_counts_and_balance(demo_root: Path) -> None:
    counts = _made_with(demo_root)["counts"]
    assert (demo_root / "classes.txt").read_text().split() == CLASS_NAMES
    assert counts["unlabeled"] == 0 and not list((demo_root / "videos").glob("unlabeled_*"))
    for split in demo_data.SPLITS:
        n = counts[split]
        lines = (demo_root / f"{split}.csv").read_text().splitlines()
        assert len(lines) == n
        labels = [int(line.split()[-1]) for line in lines]
        assert np.bincount(labels, minlength=8).tolist() == [n // 8] * 8
        for line in lines:
            assert (demo_root / line.split()[0]).is_file()


def test_demo_videos_decode(demo_root: Path) -> None:
    rel, label = (demo_root / "val.csv").read_text().split()[:2]
    made = _made_with(demo_root)
    expected = render_clip(int(label), demo_data._clip_seed(made["seed"], "val", 0),
                           made["num_frames"], tuple(made["size"]))
    _assert_close_to_rendered(_decode_all(demo_root / rel), expected)


def _age(path: Path) -> None:
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def test_make_is_idempotent_and_recovers_from_missing_marker(tmp_path: Path) -> None:
    kw = dict(num_train=8, num_val=0, num_test=0, num_frames=8, size=(32, 32), verbose=False, num_unlabeled=0)
    out = make_demo_dataset(tmp_path, **kw)
    assert out == {"root": tmp_path, "train": tmp_path / "train.csv", "val": tmp_path / "val.csv",
                   "test": tmp_path / "test.csv", "pretrain": tmp_path / "pretrain.csv"}
    video = tmp_path / (tmp_path / "train.csv").read_text().split()[0]
    _age(video)
    make_demo_dataset(tmp_path, **kw)
    assert video.stat().st_mtime_ns == 1_000_000_000  # second call did nothing

    (tmp_path / demo_data.MARKER).unlink()
    make_demo_dataset(tmp_path, **kw)
    assert video.stat().st_mtime_ns != 1_000_000_000
    assert (tmp_path / demo_data.MARKER).is_file()


def test_changed_parameters_regenerate_without_stale_clips(tmp_path: Path) -> None:
    kw = dict(num_val=0, num_test=0, num_frames=8, size=(32, 32), verbose=False, num_unlabeled=0)
    make_demo_dataset(tmp_path, num_train=8, **kw)
    make_demo_dataset(tmp_path, num_train=4, **kw)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4
    assert len((tmp_path / "train.csv").read_text().splitlines()) == 4


def test_unlabeled_clips_go_to_the_pretraining_list_only(tmp_path: Path) -> None:
    kw = dict(num_val=0, num_test=0, num_frames=4, size=(32, 32), verbose=False)
    out = make_demo_dataset(tmp_path / "a", num_train=8, num_unlabeled=16, **kw)
    train = out["train"].read_text().splitlines()
    pretrain = out["pretrain"].read_text().splitlines()
    # The pre-training list: the training clips, then the unlabelled ones; paths only, and no class in the names.
    assert len(pretrain) == 24 and pretrain[:8] == [line.split()[0] for line in train]
    assert all(len(line.split()) == 1 for line in pretrain)
    assert all(not any(name in line for name in CLASS_NAMES) for line in pretrain[8:])
    assert all((out["root"] / line).is_file() for line in pretrain)
    assert all(line not in out["test"].read_text() + out["val"].read_text() for line in pretrain)
    # The labelled splits are the same clips with or without an unlabelled pool.
    plain = make_demo_dataset(tmp_path / "b", num_train=8, num_unlabeled=0, **kw)
    assert plain["train"].read_text() == out["train"].read_text()
    assert plain["pretrain"].read_text().splitlines() == [line.split()[0] for line in train]
    rel = train[3].split()[0]
    np.testing.assert_array_equal(_decode_all(out["root"] / rel), _decode_all(plain["root"] / rel))
    # Changing only the pool size regenerates, without stale unlabelled clips.
    make_demo_dataset(tmp_path / "a", num_train=8, num_unlabeled=4, **kw)
    assert len(list((tmp_path / "a" / "videos").glob("unlabeled_*.mp4"))) == 4


def test_concurrent_makers_generate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = []
    real_write = demo_data.write_mp4
    monkeypatch.setattr(demo_data, "write_mp4", lambda path, frames: (written.append(path), real_write(path, frames)))
    kw = dict(num_train=8, num_val=0, num_test=0, num_frames=4, size=(32, 32), verbose=False, num_unlabeled=0)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: make_demo_dataset(tmp_path, **kw), range(3)))
    assert len(written) == 8 and all(r == results[0] for r in results)


def test_ensure_defaults_to_data_demo_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = ensure_demo_dataset(num_train=8, num_val=8, num_test=0, num_frames=4, size=(16, 32), verbose=False,
                              num_unlabeled=0)
    assert out["root"] == tmp_path / "data" / "demo"
    assert out["val"].is_file() and (out["root"] / demo_data.MARKER).is_file()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_data.main(["--root", str(tmp_path), "--num_train", "8", "--num_val", "0", "--num_test", "0",
                    "--num_frames", "4", "--size", "16", "40", "--num_unlabeled", "0"])
    assert "ready" in capsys.readouterr().out
    assert _decode_all(tmp_path / (tmp_path / "train.csv").read_text().split()[0]).shape == (4, 16, 40, 3)
