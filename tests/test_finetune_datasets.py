"""Fine-tuning datasets: build_dataset for list files, SSV2 frame folders, UCF101 and HMDB51 splits."""
from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from patches.data.augment import parse_rand_augment
from patches.data.clip_sampling import segment_clip_indices
from patches.data.datasets import (ClassificationDataConfig, VideoClsEvalDataset, VideoClsTrainDataset, build_dataset,
                                   collate_fn_for)
from patches.data.demo import render_clip, write_mp4
from patches.data.lists import VideoListsConfig, VideoRecord
from patches.data.transforms import RandomResizedCropTransform
from patches.data.video_reader import FrameFolder
from patches.grid import make_grid

# torchvision 0.29 deprecates its JPEG codecs (for TorchCodec); they are still what SSV2 frame folders use.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

GRID = make_grid(4, 2, (32, 48), 16)


def make_config(data_path: Path, **kw) -> ClassificationDataConfig:
    """What run_class_finetuning passes, with augmentation off unless a test turns it on; ``kw`` sets fields of
    the config or of its lists."""
    values = dict(data_set="custom", data_path=str(data_path), eval_data_path=None, data_root=None, sampling_rate=2,
                  num_sample=1, short_side_size=None, test_num_segment=2, test_num_crop=3, aa="none",
                  train_interpolation="bicubic", reprob=0.0, remode="pixel", recount=1, nb_classes=None,
                  fname_tmpl="img_{:05}.jpg", split=1, flip=None)
    values.update(kw)
    list_fields = {f.name for f in fields(VideoListsConfig)}
    lists = VideoListsConfig(**{k: v for k, v in values.items() if k in list_fields})
    return ClassificationDataConfig(lists=lists, **{k: v for k, v in values.items() if k not in list_fields})


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 8-frame 64x64 mp4, to be copied wherever a test needs a decodable video."""
    path = tmp_path_factory.mktemp("tiny") / "clip.mp4"
    write_mp4(path, render_clip(0, 0, num_frames=8, size=(64, 64)))
    return path


def _place(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


# ---- training items ---------------------------------------------------------------------------------

def test_train_items_at_a_non_square_grid(demo_root: Path) -> None:
    config = make_config(demo_root, aa="rand-m7-n4-mstd0.5-inc1", reprob=0.25, flip=False)
    ds, nb_classes = build_dataset("train", config, GRID)
    assert isinstance(ds, VideoClsTrainDataset) and nb_classes == 8 and len(ds) == 16
    assert ds.transform.flip is False and ds.transform.rand_augment is not None
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_fn_for(1))
    videos, labels = next(iter(loader))
    assert videos.dtype == torch.float32 and videos.shape == (4, 3, 4, 32, 48)
    assert labels.dtype == torch.int64 and ((0 <= labels) & (labels < 8)).all()
    assert torch.isfinite(videos).all() and videos.std() > 0.1


def test_num_sample_gives_different_clips_that_collate_flat(demo_root: Path) -> None:
    ds, _ = build_dataset("train", make_config(demo_root, num_sample=2), GRID)
    torch.manual_seed(0)
    items = [ds[i] for i in range(3)]
    for videos, labels in items:
        assert len(videos) == len(labels) == 2 and labels[0] == labels[1]
        # the same frames (see the grey-levels test below), cropped and flipped apart on the textured demo videos
        assert videos[0].shape == (3, 4, 32, 48) and not torch.equal(videos[0], videos[1])
    videos, labels = collate_fn_for(2)(items)
    assert videos.shape == (6, 3, 4, 32, 48) and labels.shape == (6,)
    assert torch.equal(videos[3], items[1][0][1])
    assert labels.tolist() == [lab for _, pair in items for lab in pair]


@pytest.mark.parametrize("sampling", ["stride", "segment"])
def test_num_sample_clips_are_one_temporal_pick_augmented_apart(tmp_path: Path, sampling: str) -> None:
    """VideoMAE's repeated augmentation (kinetics.py, ssv2.py): one decoded clip, num_sample augmentations. Frame i
    of the video is a flat grey of level 4 * i, so each clip frame's mean says which frame it is, whatever the
    crop and flip; the textured demo test above shows the augmentations differ."""
    levels = 4 * np.arange(60, dtype=np.uint8)
    write_mp4(tmp_path / "grey.mp4", np.broadcast_to(levels[:, None, None, None], (60, 48, 64, 3)).copy())
    ds = VideoClsTrainDataset([VideoRecord(str(tmp_path / "grey.mp4"), 3, "list", 1)], GRID, 3,
                              RandomResizedCropTransform(GRID.input_size, flip=True), num_sample=3, sampling=sampling)
    for seed in range(4):
        torch.manual_seed(seed)
        videos, labels = ds[0]
        assert labels == [3, 3, 3]
        means = [v[0].mean(dim=(1, 2)) for v in videos]  # channel 0, per frame (normalised: 1/255 is ~0.017)
        for other in means[1:]:
            assert (other - means[0]).abs().max() < 0.02, (seed, means)


def test_train_items_are_reproducible_under_torch_seed(demo_root: Path) -> None:
    ds, _ = build_dataset("train", make_config(demo_root, aa="rand-m9-n2", reprob=0.5), GRID)
    torch.manual_seed(3)
    a = [ds[i][0] for i in range(3)]
    torch.manual_seed(3)
    b = [ds[i][0] for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---- RandAugment and random erasing act on whole clips ----------------------------------------------

def _still_clip(t: int = 6, h: int = 40, w: int = 56) -> torch.Tensor:
    frame = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return frame.expand(t, h, w, 3)


def test_rand_augment_policy_parsing() -> None:
    assert parse_rand_augment("rand-m7-n4-mstd0.5-inc1") == (4, 7)
    assert parse_rand_augment("rand-m9-mstd0.5") == (2, 9)
    assert parse_rand_augment("none") is None and parse_rand_augment("") is None
    for bad in ("v0", "rand-m12", "rand-q3"):
        with pytest.raises(ValueError, match="RandAugment"):
            parse_rand_augment(bad)


def test_rand_augment_and_const_erasing_hit_every_frame_alike() -> None:
    clip = _still_clip()
    augment = RandomResizedCropTransform((32, 48), rand_augment="rand-m9-n3-mstd0.5-inc1", reprob=1.0,
                                         remode="const", flip=False)
    plain = RandomResizedCropTransform((32, 48), flip=False)
    torch_state = torch.get_rng_state()
    changed = 0
    for seed in range(12):
        out = augment(clip, np.random.default_rng(seed))
        assert out.shape == (3, 6, 32, 48)
        assert torch.equal(out, out[:, :1].expand_as(out))  # RandAugment and the box: same in every frame
        assert (out == 0).all(dim=(0, 1)).any()  # the constant-erased box is there
        # Same seed, same crop: what differs outside the box is RandAugment's doing.
        changed += not torch.equal(out, plain(clip, np.random.default_rng(seed)))
        assert torch.equal(out, augment(clip, np.random.default_rng(seed)))
    assert changed >= 10
    assert torch.equal(torch.get_rng_state(), torch_state)  # global torch RNG left alone


def test_pixel_erasing_uses_one_box_for_all_frames() -> None:
    clip = _still_clip()
    erase = RandomResizedCropTransform((32, 48), rand_augment="rand-m7-n4", reprob=1.0, remode="pixel")
    for seed in range(6):
        out = erase(clip, np.random.default_rng(seed))
        masks = [(out[:, t] != out[:, 0]).any(0) for t in range(1, out.shape[1])]
        assert masks[0].any()
        for m in masks[1:]:
            assert torch.equal(m, masks[0])
        rows, cols = masks[0].nonzero(as_tuple=True)
        box = torch.zeros_like(masks[0])
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert torch.equal(masks[0], box)  # the noise differs per frame, inside one rectangle


# ---- validation and test views ----------------------------------------------------------------------

def test_validation_and_test_item_counts(demo_root: Path) -> None:
    config = make_config(demo_root, test_num_segment=2, test_num_crop=3)
    val, nb_classes = build_dataset("validation", config, GRID)
    assert nb_classes == 8 and len(val) == 8
    video, label, index = val[5]
    assert video.shape == (3, 4, 32, 48) and index == 5 and 0 <= label < 8

    test, _ = build_dataset("test", config, GRID)
    assert isinstance(test, VideoClsEvalDataset) and len(test) == 8 * 2 * 3
    loader = torch.utils.data.DataLoader(test, batch_size=12, collate_fn=collate_fn_for(1))
    views, labels = defaultdict(list), {}
    for videos, batch_labels, ids, batch_views in loader:
        assert videos.shape[1:] == (3, 4, 32, 48)
        for vid, lab, view in zip(ids.tolist(), batch_labels.tolist(), batch_views.tolist()):
            views[vid].append(view)
            assert labels.setdefault(vid, lab) == lab
    assert sorted(views) == list(range(8))
    assert all(sorted(v) == list(range(6)) for v in views.values())


def test_test_crops_move_along_the_long_side(tmp_path: Path) -> None:
    ramp = np.broadcast_to(np.linspace(0, 250, 128).astype(np.uint8)[None, None, :, None], (8, 64, 128, 3))
    write_mp4(tmp_path / "ramp.mp4", np.ascontiguousarray(ramp))
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("ramp.mp4 0\nramp.mp4 1\n")
    grid = make_grid(4, 2, 32, 16)
    test, _ = build_dataset("test", make_config(tmp_path, test_num_segment=1, test_num_crop=3), grid)
    means = [test[i][0].mean().item() for i in range(3)]
    assert means[0] < means[1] < means[2]
    val, _ = build_dataset("validation", make_config(tmp_path), grid)  # no val.csv: falls back to test.csv
    assert len(val) == 2 and val[0][0].mean().item() == pytest.approx(means[1], abs=1e-5)


def test_segments_spread_and_short_videos(tmp_path: Path) -> None:
    starts = [int(s[0]) for s in segment_clip_indices(32, 4, 2, 3)]
    assert starts == [0, 12, 25]  # 32 frames, a clip touches 7: starts 0 .. 25
    assert segment_clip_indices(32, 4, 2, 1)[0].tolist() == [12, 14, 16, 18]  # centred
    assert all(s.tolist() == [0, 1, 2, 0] for s in segment_clip_indices(3, 4, 1, 4))  # loops, segments coincide

    write_mp4(tmp_path / "short.mp4", render_clip(1, 0, num_frames=3, size=(64, 64)))
    (tmp_path / "train.csv").write_text("short.mp4 1\n")
    (tmp_path / "test.csv").write_text("short.mp4 1\n")
    test, _ = build_dataset("test", make_config(tmp_path, sampling_rate=4, test_num_segment=4, test_num_crop=2), GRID)
    assert len(test) == 8
    assert [test[i][3] for i in range(8)] == list(range(8))
    assert test[7][0].shape == (3, 4, 32, 48)


# ---- labels and class counts ------------------------------------------------------------------------

def _lists(folder: Path, train: str, test: str | None = None) -> Path:
    (folder / "train.csv").write_text(train)
    (folder / "test.csv").write_text(test if test is not None else train)
    return folder


def test_custom_class_count_is_inferred_and_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _lists(tmp_path, "a.mp4 0\n# comment\nb.mp4 4\nc.mp4 2\n", "a.mp4 1\nb.mp4 5\n")
    assert build_dataset("train", make_config(tmp_path), GRID)[1] == 5

    with pytest.raises(ValueError, match=r"train\.csv, line 3: label 4 .*--nb_classes 3"):
        build_dataset("train", make_config(tmp_path, nb_classes=3), GRID)
    # A test label beyond the classes found in train.csv.
    with pytest.raises(ValueError, match=r"test\.csv, line 2: label 5 .*5 classes found in .*train\.csv"):
        build_dataset("test", make_config(tmp_path), GRID)

    assert build_dataset("train", make_config(tmp_path, nb_classes=10), GRID)[1] == 10
    assert "warning: --nb_classes 10" in capsys.readouterr().out


def test_known_data_sets_class_counts(tmp_path: Path) -> None:
    _lists(tmp_path, "a.mp4 0\nb.mp4 399\n")
    assert build_dataset("train", make_config(tmp_path, data_set="Kinetics-400"), GRID)[1] == 400
    assert build_dataset("test", make_config(tmp_path, data_set="Kinetics-700"), GRID)[1] == 700
    with pytest.raises(ValueError, match=r"train\.csv, line 2: label 399 .*--data_set SSV2, which has 174"):
        build_dataset("train", make_config(tmp_path, data_set="SSV2"), GRID)


def test_missing_label_and_missing_files(tmp_path: Path) -> None:
    _lists(tmp_path, "a.mp4 0\nb.mp4\n")
    with pytest.raises(ValueError, match=r"train\.csv, line 2: no label"):
        build_dataset("train", make_config(tmp_path), GRID)
    with pytest.raises(FileNotFoundError, match="val_only"):
        build_dataset("test", make_config(tmp_path, eval_data_path=str(_mkdir(tmp_path / "val_only"))), GRID)
    with pytest.raises(ValueError, match="not a folder"):
        build_dataset("train", make_config(tmp_path / "train.csv"), GRID)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# ---- SSV2 frame folders -----------------------------------------------------------------------------

def _write_frames(folder: Path, count: int, h: int = 40, w: int = 56) -> None:
    """JPEG frames img_00001.jpg... : brightness rising left to right, offset by 10 per frame number."""
    from torchvision.io import write_jpeg

    folder.mkdir(parents=True)
    ramp = torch.linspace(0, 150, w).round().to(torch.uint8)
    for i in range(1, count + 1):
        frame = (ramp + 10 * i).view(1, 1, w).expand(3, h, w).contiguous()
        write_jpeg(frame, str(folder / f"img_{i:05d}.jpg"), quality=95)


def test_ssv2_frame_folders_and_no_flip(tmp_path: Path, tiny_mp4: Path) -> None:
    for name in ("a", "b"):
        _write_frames(tmp_path / "frames" / name, 10)
    _place(tiny_mp4, tmp_path / "clips" / "x.webm")
    _lists(tmp_path, "frames/a 10 3\nframes/b 10 173\nclips/x.webm 7\n")

    folder = FrameFolder(str(tmp_path / "frames" / "a"), 10)
    frames = folder.read(np.array([0, 3]))
    assert frames.shape == (2, 40, 56, 3) and frames.dtype == torch.uint8
    assert abs(frames[1].float().mean() - frames[0].float().mean() - 30) < 3  # files 1 and 4

    config = make_config(tmp_path, data_set="SSV2")
    train, nb_classes = build_dataset("train", config, GRID)
    assert nb_classes == 174 and [r.label for r in train.records] == [3, 173, 7]
    assert [r.num_frames for r in train.records] == [10, 10, None]
    assert train.transform.flip is False
    torch.manual_seed(0)
    for _ in range(8):
        video, label = train[0]
        assert video.shape == (3, 4, 32, 48) and label == 3
        assert video[..., :4].mean() < video[..., -4:].mean()  # never mirrored
    assert train[2][0].shape == (3, 4, 32, 48)  # the video line next to frame folders

    flipped = build_dataset("train", make_config(tmp_path, data_set="SSV2", flip=True), GRID)[0]
    assert any(flipped[0][0][..., :4].mean() > flipped[0][0][..., -4:].mean() for _ in range(16))

    # SSV2 samples by segments: validation reads the centres of 4 segments of 2.5 frames, 2, 4, 7, 9 of 10 (1-based).
    for i in (1, 3, 5, 6, 8, 10):
        (tmp_path / "frames" / "a" / f"img_{i:05d}.jpg").unlink()
    val, _ = build_dataset("validation", config, GRID)
    video, label, index = val[0]
    assert video.shape == (3, 4, 32, 48) and (label, index) == (3, 0)


# ---- UCF101 and HMDB51 split files ------------------------------------------------------------------

def test_ucf101_split_files(tmp_path: Path, tiny_mp4: Path) -> None:
    splits, videos = _mkdir(tmp_path / "splits"), tmp_path / "videos"
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n3 Biking\r\n")
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1", "Biking/v_Biking_g01_c01.avi 3"]
    test = ["Archery/v_Archery_g02_c01.avi", "Biking/v_Biking_g02_c01.avi",
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi"]
    (splits / "trainlist02.txt").write_text("\r\n".join(train) + "\r\n")
    (splits / "testlist02.txt").write_text("\r\n".join(test) + "\r\n")
    for line in train + test:
        _place(tiny_mp4, videos / line.split()[0])

    config = make_config(splits, data_set="UCF101", data_root=str(videos), split=2)
    train_set, nb_classes = build_dataset("train", config, GRID)
    assert nb_classes == 101
    assert [(Path(r.path).name, r.label) for r in train_set.records] == [
        ("v_ApplyEyeMakeup_g01_c01.avi", 0), ("v_Biking_g01_c01.avi", 2)]
    assert train_set[1][0].shape == (3, 4, 32, 48) and train_set[1][1] == 2
    for mode in ("validation", "test"):
        ds, _ = build_dataset(mode, config, GRID)
        assert [r.label for r in ds.records] == [1, 2, 0]
        assert Path(ds.records[0].path) == videos / "Archery" / "v_Archery_g02_c01.avi"
    assert build_dataset("test", config, GRID)[0][17][1:] == (0, 2, 5)


def test_hmdb51_split_files(tmp_path: Path, tiny_mp4: Path) -> None:
    splits = _mkdir(tmp_path / "hmdb")
    marks = {"wave": "w1.avi 1\nw2.avi 2\nw3.avi 0\n", "brush_hair": "b1.avi 2 \nb2.avi 1 \n",
             "cartwheel": "c1.avi 0\nc2.avi 1\nc3.avi 2\n"}
    for cls, body in marks.items():
        (splits / f"{cls}_test_split3.txt").write_text(body)
        (splits / f"{cls}_test_split1.txt").write_text("other.avi 1\n")
        for line in body.splitlines():
            _place(tiny_mp4, splits / cls / line.split()[0])

    config = make_config(splits, data_set="HMDB51", split=3)  # no data_root: videos next to the split files
    train, nb_classes = build_dataset("train", config, GRID)
    assert nb_classes == 51
    assert [(Path(r.path).relative_to(splits).as_posix(), r.label) for r in train.records] == [
        ("brush_hair/b2.avi", 0), ("cartwheel/c2.avi", 1), ("wave/w1.avi", 2)]
    test, _ = build_dataset("test", config, GRID)
    assert [(Path(r.path).name, r.label) for r in test.records] == [("b1.avi", 0), ("c3.avi", 1), ("w2.avi", 2)]
    assert len(test) == 3 * 2 * 3 and test[0][0].shape == (3, 4, 32, 48)
    val, _ = build_dataset("validation", config, GRID)
    assert len(val) == 3 and val[2][1:] == (2, 2)


def test_fewer_labels_used_than_nb_classes_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _lists(tmp_path, "a.mp4 0\nb.mp4 9\nc.mp4 1\nd.mp4 12\n", "a.mp4 0\n")
    build_dataset("train", make_config(tmp_path, nb_classes=20), GRID)
    assert "warning: --nb_classes 20 but" in capsys.readouterr().out


def test_config_defaults_mean_off() -> None:
    config = ClassificationDataConfig(VideoListsConfig("custom", "/data"), sampling_rate=2)
    assert (config.num_sample, config.aa, config.train_crop_scale, config.reprob, config.recount) == (1, None, None,
                                                                                                     0.0, 1)
    assert (config.short_side_size, config.test_num_segment, config.test_num_crop) == (None, 1, 1)
    assert config.train_flip is True
    assert ClassificationDataConfig(VideoListsConfig("SSV2", "/data"), sampling_rate=2).train_flip is False
    assert ClassificationDataConfig(VideoListsConfig("SSV2", "/data"), sampling_rate=2, flip=True).train_flip is True
