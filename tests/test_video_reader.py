"""Reading videos: PyAV gives decord's frames, decoding errors get one-line reasons, clips share one decode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patches.data.video_reader import (BACKENDS, PyAVVideo, VideoDecodeError, VideoFile, decode_clips, decode_reason,
                                       open_video)

ROOT = Path(__file__).resolve().parents[1]

from patches.perf import bench_videos


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """H.264 files with B-frames, as ffmpeg makes them (see scripts/loader_bench.py)."""
    return bench_videos.make_videos(tmp_path_factory.mktemp("lb"), 2, short_side=64, seconds=1.6, fps=25)


def test_fast_reader_gives_decords_frames(videos: list[str]) -> None:
    import decord
    fast, reader = PyAVVideo.open(videos[1]), decord.VideoReader(videos[1], num_threads=1)
    assert fast is not None and len(fast) == len(reader) == len(VideoFile(videos[1]))
    for indices in (np.array([0, 1, 2]), np.array([5, 9, 13, 17]), np.array([3, 20, 39])):
        assert np.array_equal(fast.read(indices), reader.get_batch(indices.tolist()).asnumpy())


def test_both_backends_read_the_same_frames_and_clips_share_one_decode(videos: list[str]) -> None:
    assert BACKENDS == ("auto", "decord")
    auto, strict = VideoFile(videos[0]), VideoFile(videos[0], backend="decord")
    assert auto.fast is not None and strict.fast is None
    picks = [np.array([0, 2, 4]), np.array([2, 4, 6])]
    clips = decode_clips(auto, picks)
    assert [c.shape for c in clips] == [(3, 64, 114, 3)] * 2 and clips[0].dtype == torch.uint8
    assert torch.equal(clips[0][1:], clips[1][:2])
    assert torch.equal(clips[1], strict.read(np.array([2, 4, 6])))
    with pytest.raises(ValueError, match="backend must be one of"):
        VideoFile(videos[0], backend="pyav")


def test_webm_vp9_is_read_by_pyav_with_decords_frames_but_not_when_cut(tmp_path: Path) -> None:
    import decord
    path = tmp_path / "clip.webm"
    bench_videos.write_video(path, bench_videos.render_video(0, (64, 96), 40), 25, codec="vp9")
    fast, reader = VideoFile(str(path)).fast, decord.VideoReader(str(path), num_threads=1)
    assert fast is not None and len(fast) == len(reader) == 40  # WebM keeps no frame count: PyAV indexes it
    for indices in (np.array([0, 1]), np.array([6, 17, 39])):
        assert np.array_equal(fast.read(indices), reader.get_batch(indices.tolist()).asnumpy())
    data = path.read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[:len(data) * 2 // 3])
    assert PyAVVideo.open(str(tmp_path / "cut.webm")) is None  # ends before the container's duration


def test_unreadable_files_are_named_with_a_one_line_reason(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match=r"cannot decode video .*missing\.mp4: file not found") as e:
        open_video(str(tmp_path / "missing.mp4"))
    assert e.value.path == str(tmp_path / "missing.mp4") and e.value.reason == "file not found"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match=r"empty file \(0 bytes\)"):
        VideoFile(str(tmp_path / "empty.mp4"))
    with pytest.raises(VideoDecodeError, match="is a folder, not a video file"):
        open_video(str(tmp_path))
    rethrown = VideoDecodeError("cannot decode video x.mp4: why")  # as a DataLoader worker re-raises it
    assert rethrown.path is None and str(rethrown) == "cannot decode video x.mp4: why"


def test_decode_reason_rewrites_decords_errors() -> None:
    assert decode_reason(RuntimeError("[12:00:01] /src/video_reader.cc:83: av_read_frame failed\nmore")) == \
        "frames cannot be decoded, the file is probably truncated or corrupt (av_read_frame failed)"
    assert decode_reason(RuntimeError("Error reading x.mp4...")).startswith("cannot be opened as a video")
    assert "decord 0.6 bug" in decode_reason(RuntimeError("Check failed: from_size == to_size"))
    assert decode_reason(ValueError()) == "ValueError"
    assert len(decode_reason("x" * 1000)) == 300


def test_clips_far_apart_are_decoded_in_separate_runs_with_the_same_frames(tmp_path: Path) -> None:
    """With a keyframe every 8 frames, two clips far apart are two runs (a seek each); the frames are decord's."""
    import decord

    from patches.data.encoding import EncodeConfig, transcode_pyav
    src = bench_videos.make_videos(tmp_path, 1, short_side=64, seconds=2.4, fps=25)[0]
    path = str(tmp_path / "gop8.mp4")
    transcode_pyav(src, path, EncodeConfig(short_side=64, gop=8))
    fast = PyAVVideo.open(path)
    indices = np.array([1, 3, 5, 12, 40, 42, 44, 47])
    assert [len(r) for r in fast._runs(indices)] == [4, 4]  # 12 to 40: keyframes 16, 24, 32 between
    frames = fast.decode(indices)
    assert [f.format.name for f in frames] == ["yuv420p"] * len(indices)
    expected = decord.VideoReader(path, num_threads=1).get_batch(indices.tolist()).asnumpy()
    assert np.array_equal(fast.read(indices), expected)
