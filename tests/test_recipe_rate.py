"""prepare_videos.py --keep_every K: recipe-rate files whose clips, read with the recipe's own --sampling_rate R
(R/K frames apart in the file, as its tag says), show the moments that R picks on the full-rate file (real
encodes through PyAV, real timestamps)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from patches.cli.prepare_videos import main as prepare_videos_main
from patches.data.clip_sampling import sample_clip_indices
from patches.data.encoding import EncodeConfig, transcode_pyav
from patches.data.datasets import VideoClsEvalDataset, VideoClsTrainDataset, VideoMAEPretrainDataset
from patches.data.lists import VideoRecord
from patches.data.recipe_rate import file_sampling_rate
from patches.data.transforms import RandomResizedCropTransform
from patches.data.video_reader import PyAVVideo, VideoFile
from patches.grid import make_grid
from patches.errors import UsageError
from patches.perf.bench_videos import render_video, write_video

FPS, FRAMES = 30, 60


def _grey_video(path: Path) -> None:
    """30 fps, frame i a flat grey of level 4 * i: each frame says which source frame it is."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        stream.options = {"threads": "1", "crf": "0"}
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 4 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _times(path: Path) -> list[Fraction]:
    """Every frame's presentation time in seconds, in display order."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return sorted(Fraction(p.pts) * stream.time_base for p in c.demux(stream) if p.pts is not None)


@pytest.fixture(scope="module")
def full_and_recipe_rate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("rate")
    _grey_video(folder / "src.mp4")
    for name, keep_every in (("full.mp4", 1), ("half.mp4", 2)):
        transcode_pyav(str(folder / "src.mp4"), str(folder / name), EncodeConfig(crf=0, gop=8, keep_every=keep_every))
    return folder / "full.mp4", folder / "half.mp4"


def test_recipe_rate_clips_show_the_recipes_moments_in_time(full_and_recipe_rate: tuple[Path, Path]) -> None:
    full, half = full_and_recipe_rate
    full_times, half_times = _times(full), _times(half)
    assert len(full_times) == FRAMES and len(half_times) == FRAMES // 2
    # frame j of the recipe-rate file is source frame 2j, shown at the same moment
    assert half_times == [Fraction(2 * j, FPS) for j in range(FRAMES // 2)] == full_times[::2]
    # the file says it keeps every 2nd frame, so the recipe's --sampling_rate 4 reads it 2 frames apart
    video = VideoFile(str(half))
    assert video.keep_every == 2 and VideoFile(str(full)).keep_every == 1
    assert file_sampling_rate(4, video) == 2
    picks = sample_clip_indices(len(half_times), 8, 2, np.random.default_rng(0))
    moments = [half_times[i] for i in picks]
    start = int(picks[0]) * 2  # the full-rate clip with VideoMAE's rate 4 that starts at the same moment
    assert moments == [full_times[start + 4 * i] for i in range(8)]
    assert [float(m) for m in moments] == pytest.approx([0.8 + 4 * i / 30 for i in range(8)])  # seed 0: frame 24


def test_the_datasets_read_a_recipe_rate_file_at_the_recipes_moments(full_and_recipe_rate: tuple[Path, Path]) -> None:
    """The recipe's --sampling_rate 4 on the --keep_every 2 file and on the full-rate one: pre-training, fine-tuning
    and test clips take frames 4 source frames apart (greys 4 levels a source frame apart, so steps of 16)."""
    full, half = full_and_recipe_rate
    list_file = full.parent / "list.csv"
    list_file.write_text(f"{half.name}\n{full.name}\n")
    grid = make_grid(8, 2, 32, 16)
    pretraining = VideoMAEPretrainDataset(str(list_file), None, grid, 4, lambda: (None, None))
    records = [VideoRecord(str(path), 0, str(list_file), 1) for path in (half, full)]
    train = VideoClsTrainDataset(records, grid, 4, RandomResizedCropTransform(grid.input_size))
    test = VideoClsEvalDataset(records, grid, 4, num_segments=2)
    for path in (half, full):
        source = VideoFile(str(path))
        for pick in (pretraining._picks(source, np.random.default_rng(1))[0],
                     train.clip_indices(source, np.random.default_rng(1)), test.clip_indices(source, 1)):
            grey = source.read(np.unique(pick))[:, 16, 24, 0].int()
            assert len(grey) == 8 and (grey.diff() - 16).abs().max() <= 2, (path.name, pick, grey)


def test_keep_every_must_divide_the_recipes_sampling_rate(tmp_path: Path) -> None:
    _grey_video(tmp_path / "src.mp4")
    transcode_pyav(str(tmp_path / "src.mp4"), str(tmp_path / "third.mp4"), EncodeConfig(crf=0, gop=8, keep_every=3))
    video = VideoFile(str(tmp_path / "third.mp4"))
    assert video.keep_every == 3 and file_sampling_rate(6, video) == 2 and file_sampling_rate(3, video) == 1
    with pytest.raises(UsageError, match=r"third\.mp4: prepared with --keep_every 3, which does not divide "
                                         r"--sampling_rate 4"):
        file_sampling_rate(4, video)


def test_keep_every_flag_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for bad in (["--keep_every", "0"], ["--keep_every", "2", "--max_fps", "15"]):
        with pytest.raises(SystemExit) as stop:
            prepare_videos_main([str(tmp_path), str(tmp_path / "out"), *bad])
        assert stop.value.code == 2
    assert "--keep_every" in capsys.readouterr().err


def test_recipe_rate_files_keep_the_keyframe_interval_in_source_frames(tmp_path: Path) -> None:
    """--gop left out: a keyframe every 16 source frames, so 16 / K frames of a recipe-rate file; given: as given."""
    from patches.cli.encode_flags import encode_config
    from patches.cli.prepare_videos import get_args_parser

    parser = get_args_parser()
    for flags, gop in [([], 16), (["--keep_every", "2"], 8), (["--keep_every", "4"], 4), (["--keep_every", "3"], 5),
                       (["--keep_every", "32"], 1), (["--keep_every", "2", "--gop", "16"], 16)]:
        assert encode_config(parser, parser.parse_args([str(tmp_path), str(tmp_path / "out"), *flags])).gop == gop


def _panning_video(path: Path, frames: int = 60) -> np.ndarray:
    """30 fps generated footage (a textured pan, moving blobs, grain); returns the frames."""
    clip = render_video(0, (128, 160), frames)
    write_video(path, clip, FPS)
    return clip


def test_a_recipe_rate_file_keeps_the_full_rate_files_quality_per_frame_and_is_smaller(tmp_path: Path) -> None:
    """At the same --crf, x264 would give a frame shown K times longer more bits: rate control runs at the source's
    rate, so the kept frames come out about as good as in the full-rate file, in fewer bytes."""
    clip = _panning_video(tmp_path / "src.mp4")
    psnr, size = {}, {}
    for k in (1, 2):
        out = tmp_path / f"k{k}.mp4"
        transcode_pyav(str(tmp_path / "src.mp4"), str(out), EncodeConfig(crf=23, gop=16 // k, keep_every=k))
        video = PyAVVideo.open(str(out))
        kept = video.read(np.arange(len(video)))[:: 2 // k].astype(np.float64)  # source frames 0, 2, 4, ...
        video.close()
        psnr[k] = 10 * np.log10(255 ** 2 / np.mean((kept - clip[::2]) ** 2))
        size[k] = out.stat().st_size
    assert abs(psnr[2] - psnr[1]) < 1.0, psnr
    assert size[2] < 0.85 * size[1], size  # without rate control at the source rate: 0.94
