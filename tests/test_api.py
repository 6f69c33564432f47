"""The Python API (patches.load, patches.create_model): on checkpoints the CLI made, the same features as
extract_features.py and the same labels as run_inference.py; README's example runs as written; and the
installed package works from another folder (slow)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import patches
from patches.errors import PatchesError, UsageError
from patches.grid import make_grid

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu", "--num_workers", "0"]
GRID = ["--input_size", "32", "--patch_size", "8", "--num_frames", "4", "--sampling_rate", "2"]
FINETUNE = [*CPU, "--model", "vit_micro_patch16_224", "--data_set", "custom", *GRID, "--batch_size", "4",
            "--num_sample", "1", "--epochs", "1", "--warmup_epochs", "0", "--test_num_segment", "2",
            "--test_num_crop", "2", "--mixup", "0", "--cutmix", "0", "--print_freq", "50"]


@pytest.fixture(scope="module")
def checkpoints(demo_root, tmp_path_factory):
    """A micro pre-training checkpoint (one epoch) and a classifier fine-tuned from it, made by the run scripts'
    code (the scripts' main, in this process); the classifier with its .safetensors copy and class names."""
    from patches.cli import finetune, pretrain
    out = tmp_path_factory.mktemp("api")
    pretrain.main(pretrain.get_args_parser().parse_args(
        [*CPU, "--model", "pretrain_videomae_micro_patch16_224", "--decoder_depth", "1", "--data_path",
         str(demo_root / "train.csv"), "--data_root", str(demo_root), "--batch_size", "4", "--epochs", "1", *GRID,
         "--warmup_epochs", "0", "--output_dir", str(out / "pretrain")]))
    finetune.main(finetune.get_args_parser().parse_args(
        [*FINETUNE, "--data_path", str(demo_root), "--finetune", str(out / "pretrain" / "checkpoint-0.pth"),
         "--save_safetensors", "--output_dir", str(out / "finetune")]))
    return {"pretrain": out / "pretrain" / "checkpoint-0.pth", "finetune": out / "finetune" / "checkpoint-best.pth"}


@pytest.fixture(scope="module")
def video(demo_root):
    """One generated demo video (32 frames of 64x64)."""
    return sorted((demo_root / "videos").glob("test_*"))[0]


def extracted(ckpt, video, tmp_path, *flags):
    """What extract_features.py stores for ``video``: its pooled row, [views, dim]."""
    from safetensors.numpy import load_file

    from patches.cli import extract_features
    out = tmp_path / "features"
    index = extract_features.main(extract_features.get_args_parser().parse_args(
        [*CPU, "--finetune", str(ckpt), "--data_path", str(video), "--output_dir", str(out), *flags]))
    assert index["videos"] == 1
    return load_file(str(out / index["shards"][0]["files"][0]))["pooled"][0]


def inferred(ckpt, video, capsys, *flags):
    """What run_inference.py --json prints for ``video``: its top classes."""
    from patches.cli import inference
    capsys.readouterr()
    inference.main(inference.get_args_parser().parse_args([str(video), "--checkpoint", str(ckpt), "--json", *CPU,
                                                           *flags]))
    return json.loads(capsys.readouterr().out.splitlines()[-1])["top"]  # after any notes on the file


def decoded(video):
    from patches.data.video_reader import VideoFile
    source = VideoFile(str(video))
    return source.read(np.arange(len(source))).numpy()


# ---------------------------------------------------------------- load: grid, preprocessing, features, labels

@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_load_knows_the_grid_and_preprocessing(checkpoints, kind):
    model = patches.load(checkpoints[kind], device="cpu")
    assert isinstance(model, patches.VideoModel)
    assert model.grid == make_grid(4, 2, 32, 8)
    pre = model.preprocessing
    assert (pre.num_frames, pre.sampling_rate, pre.input_size) == (4, 2, (32, 32))
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406)) and pre.std == pytest.approx((0.229, 0.224, 0.225))
    assert pre.test_views == ((2, 2) if kind == "finetune" else (5, 3))  # the fine-tuning test's, else VideoMAE's
    views = pre.transform(crops=2)(torch.zeros(4, 40, 60, 3, dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(3, 4, 32, 32)] * 2
    assert model.num_classes == (8 if kind == "finetune" else 0) and not model.network.training


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_features_are_extract_features_rows(checkpoints, video, tmp_path, kind):
    model = patches.load(checkpoints[kind], device="cpu")
    cli = extracted(checkpoints[kind], video, tmp_path, "--test_num_segment", "2", "--test_num_crop", "3")
    ours = model.features(video, segments=2, crops=3)
    assert ours.dtype == np.float32 and ours.shape == (6, 128)
    np.testing.assert_array_equal(ours, cli)


def test_features_at_another_grid_are_extract_features_rows(checkpoints, video, tmp_path):
    model = patches.load(checkpoints["pretrain"], device="cpu", grid="48/8")
    assert model.grid == make_grid(4, 2, 48, 8)
    np.testing.assert_array_equal(model.features(video), extracted(checkpoints["pretrain"], video, tmp_path,
                                                                   "--input_size", "48"))


def test_classify_gives_the_labels_and_probabilities_run_inference_prints(checkpoints, video, capsys):
    model = patches.load(checkpoints["finetune"], device="cpu")
    assert model.class_names == (video.parents[1] / "classes.txt").read_text().split()
    assert model.classify(video) == inferred(checkpoints["finetune"], video, capsys)
    top3 = model.classify(video, top_k=3, segments=1, crops=1)
    assert top3 == inferred(checkpoints["finetune"], video, capsys, "--topk", "3", "--test_num_segment", "1",
                            "--test_num_crop", "1")
    assert [t["class"] for t in top3] == [model.class_names[t["index"]] for t in top3]


def test_an_array_gives_what_its_file_gives(checkpoints, video):
    model = patches.load(checkpoints["finetune"], device="cpu")
    frames = decoded(video)
    assert frames.dtype == np.uint8 and frames.shape == (32, 64, 64, 3)
    expected = model.features(video, segments=2)
    np.testing.assert_array_equal(model.features(frames, segments=2), expected)
    np.testing.assert_array_equal(model.features(torch.from_numpy(frames), segments=2), expected)
    assert model.classify(frames) == model.classify(video)


def test_a_frame_folder_is_a_video(checkpoints, video, tmp_path):
    from torchvision.io import write_jpeg
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = decoded(video)
    for i, frame in enumerate(frames):
        write_jpeg(torch.from_numpy(frame).permute(2, 0, 1).contiguous(), str(folder / f"img_{i + 1:05}.jpg"))
    model = patches.load(checkpoints["pretrain"], device="cpu")
    assert model.features(folder).shape == (1, 128)
    np.testing.assert_array_equal(model.features(folder), extracted(checkpoints["pretrain"], folder, tmp_path))


def test_safetensors_copy_loads_as_its_checkpoint(checkpoints, video):
    pth = patches.load(checkpoints["finetune"], device="cpu")
    copy = patches.load(checkpoints["finetune"].with_suffix(".safetensors"), device="cpu",
                        class_names=pth.class_names)
    assert copy.grid == pth.grid and copy.preprocessing == pth.preprocessing
    np.testing.assert_array_equal(copy.features(video), pth.features(video))
    assert copy.classify(video) == pth.classify(video)


def test_transformers_folder_gives_extract_features_rows(checkpoints, video, tmp_path):
    pytest.importorskip("transformers")
    from patches.cli import export_hf
    folder = export_hf.main([str(checkpoints["finetune"]), str(tmp_path / "hf"), "--num_heads", "4"])
    # A transformers folder records its grid and weights but no PATCHES model name (the fallback is ViT-B).
    model = patches.load(folder, device="cpu", model="vit_micro_patch16_224")
    assert model.grid == make_grid(4, 2, 32, 8) and model.num_classes == 8
    assert model.preprocessing.sampling_rate == 4  # not recorded there either: VideoMAE's
    np.testing.assert_array_equal(model.features(video),
                                  extracted(folder, video, tmp_path, "--model", "vit_micro_patch16_224"))
    ours = patches.load(checkpoints["finetune"], device="cpu", sampling_rate=4)
    np.testing.assert_allclose(model.features(video), ours.features(video), atol=1e-5)


def test_a_videomae_checkpoint_gives_what_the_cli_gives(video, demo_root, tmp_path, capsys):
    """VideoMAE's own layout: weights under "module", no grid, no class names; its flags (a Namespace) are not
    read, so the model, grid and stride are given, to the API as to the scripts."""
    import argparse
    torch.manual_seed(0)
    network = patches.create_model("vit_micro_patch16_224", grid="32/16", num_frames=4, num_classes=8)
    path = tmp_path / "videomae.pth"
    torch.save({"module": network.state_dict(), "epoch": 99,
                "args": argparse.Namespace(model="vit_micro_patch16_224", num_frames=4, input_size=32)}, path)
    given = {"model": "vit_micro_patch16_224", "grid": make_grid(4, 2, 32, 16), "sampling_rate": 2}
    flags = ["--model", "vit_micro_patch16_224", "--input_size", "32", "--patch_size", "16", "--num_frames", "4",
             "--sampling_rate", "2"]
    classes = demo_root / "classes.txt"
    model = patches.load(path, device="cpu", class_names=classes, **given)
    assert model.grid == given["grid"] and model.preprocessing.test_views == (5, 3)  # VideoMAE's test
    np.testing.assert_array_equal(model.features(video), extracted(path, video, tmp_path, *flags))
    assert model.classify(video) == inferred(path, video, capsys, "--classes", str(classes), *flags)
    with pytest.raises(patches.NotAClassifierError, match="records no class names: pass class_names="):
        patches.load(path, device="cpu", **given).classify(video)


# ---------------------------------------------------------------- what is refused, by typed errors

def test_classify_on_a_pretraining_checkpoint_says_why(checkpoints, video):
    model = patches.load(checkpoints["pretrain"], device="cpu")
    with pytest.raises(patches.NotAClassifierError, match="has no classification head"):
        model.classify(video)
    assert issubclass(patches.NotAClassifierError, UsageError)


def test_bad_inputs_raise_typed_errors_naming_them(checkpoints, tmp_path):
    with pytest.raises(UsageError, match=f"checkpoint {tmp_path / 'none.pth'} does not exist"):
        patches.load(tmp_path / "none.pth")
    with pytest.raises(UsageError, match="3 class names for .* whose head has 8 classes"):
        patches.load(checkpoints["finetune"], class_names=["a", "b", "c"])
    model = patches.load(checkpoints["pretrain"], device="cpu")
    with pytest.raises(patches.VideoInputError, match=r"uint8 \[T, H, W, 3\]"):
        model.features(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(UsageError, match="amp must be none, bf16 or fp16, got 'fp32'"):
        model.features(np.zeros((4, 32, 32, 3), np.uint8), amp="fp32")
    with pytest.raises(UsageError, match="device nowhere"):
        model.to("nowhere")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(patches.VideoInputError, match="cannot decode video .*broken.mp4"):
        model.features(tmp_path / "broken.mp4")
    with pytest.raises(patches.VideoInputError, match="does not exist"):
        model.features(tmp_path / "missing.mp4")


# ---------------------------------------------------------------- create_model, import

def test_create_model_builds_any_registered_model_at_any_grid():
    classifier = patches.create_model("vit_micro_patch16_224", grid="48/8", num_frames=4, num_classes=5)
    assert classifier.grid == make_grid(4, 2, 48, 8)
    assert classifier(torch.zeros(1, 3, 4, 48, 48)).shape == (1, 5)
    grid = make_grid(4, 2, (32, 48), 16)
    autoencoder = patches.create_model("pretrain_videomae_micro_patch16_224", grid=grid)
    assert autoencoder.grid == grid and autoencoder.decoder_pos_embed.shape[-2] == grid.num_tokens == 12
    assert patches.create_model("vit_micro_patch16_224").grid == make_grid(16, 2, 224, 16)
    with pytest.raises(UsageError, match="is not a PATCHES model"):
        patches.create_model("vit_enormous_patch16_224")
    with pytest.raises((ValueError, PatchesError), match="not divisible"):
        patches.create_model("vit_micro_patch16_224", grid="50/16")
    with pytest.raises(UsageError, match="pass a PatchGrid or 'SIZE/PATCH'"):
        patches.create_model("vit_micro_patch16_224", grid={"input_size": 32})


@pytest.mark.slow
def test_import_patches_does_not_import_torch_and_names_the_api_lazily():
    code = ("import sys, patches, patches.grid\nassert 'torch' not in sys.modules, 'torch imported'\n"
            "assert set(patches.__all__) <= set(dir(patches))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from patches import api
    assert [getattr(patches, name) for name in patches.__all__] == [getattr(api, name) for name in patches.__all__]
    with pytest.raises(AttributeError, match="no attribute 'loads'"):
        patches.loads


# ---------------------------------------------------------------- README's example, as written

def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "README's Python API section holds one python block"
    return blocks[0]


def test_readme_python_api_example_runs_as_written(checkpoints, demo_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "output" / "demo").mkdir(parents=True)
    (tmp_path / "output" / "demo" / "finetune_pretrained").symlink_to(checkpoints["finetune"].parent)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(demo_root)
    code = readme_example()
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert "4 frames x 32x32 px" in printed and "(1, 128)" in printed


# ---------------------------------------------------------------- slow: a probe, and the installed package

@pytest.mark.slow
def test_a_probe_checkpoint_classifies_as_its_test_did(checkpoints, demo_root, video, tmp_path):
    """A probe checkpoint holds the probe alone: load builds the encoder it names, and classifies a test video
    as the probe run's own test did (its per-view logits, softmax averaged)."""
    from patches.cli import finetune
    out = tmp_path / "probe"
    finetune.main(finetune.get_args_parser().parse_args(
        [*FINETUNE, "--probe", "linear", "--finetune", str(checkpoints["pretrain"]), "--data_path", str(demo_root),
         "--output_dir", str(out)]))
    model = patches.load(out / "checkpoint-best.pth", device="cpu")
    assert model.preprocessing.test_views == (2, 2) and model.num_classes == 8
    np.testing.assert_array_equal(model.features(video),
                                  patches.load(checkpoints["pretrain"], device="cpu").features(video))
    row = [line.split()[0] for line in (demo_root / "test.csv").read_text().splitlines()].index(
        str(video.relative_to(demo_root)))
    logits = torch.tensor([r["logits"] for r in map(json.loads, (out / "test_results_rank0.jsonl").open())
                           if r["id"] == row])
    assert logits.shape == (4, 8)
    expected = logits.softmax(-1).mean(0)
    top = model.classify(video, top_k=8)
    assert [t["probability"] for t in top] == pytest.approx(expected[[t["index"] for t in top]].tolist(), abs=1e-5)


INSTALLED = """
import json, sys
import patches
pretrain, finetune, video = sys.argv[1:]
assert "/venv/" in patches.__file__, patches.__file__
out = {"file": patches.__file__}
for kind, ckpt in (("pretrain", pretrain), ("finetune", finetune)):
    model = patches.load(ckpt, device="cpu")
    out[kind] = {"features": model.features(video).tolist(), "grid": model.grid.spec}
    try:
        out[kind]["classify"] = model.classify(video)
    except patches.NotAClassifierError as e:
        out[kind]["classify"] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_installed_package_works_from_another_folder(checkpoints, video, tmp_path):
    """pip install . (not editable) into a fresh venv; from another folder, without the checkout on the path,
    load both CLI checkpoints: the same features and labels as here."""
    import shutil
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "patches", source / "patches", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    # --without-pip: the venv's python runs this machine's pip and setuptools (ensurepip's older setuptools
    # cannot build a wheel without the wheel package), installing into the venv.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(tmp_path / "venv")],
                   check=True, env=env, timeout=300)
    python = str(tmp_path / "venv" / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                   check=True, env=env, cwd=tmp_path, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([python, "-c", INSTALLED, str(checkpoints["pretrain"]), str(checkpoints["finetune"]),
                             str(video)], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["file"].startswith(str(tmp_path / "venv"))
    for kind in ("pretrain", "finetune"):
        here = patches.load(checkpoints[kind], device="cpu")
        assert out[kind]["grid"] == "32/8"
        np.testing.assert_array_equal(np.array(out[kind]["features"], np.float32), here.features(video))
    assert out["finetune"]["classify"] == patches.load(checkpoints["finetune"], device="cpu").classify(video)
    assert "has no classification head" in out["pretrain"]["classify"]
