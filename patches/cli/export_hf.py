"""Export a PATCHES or VideoMAE checkpoint as a Hugging Face transformers VideoMAE folder (config.json + model.safetensors).

A pre-training checkpoint becomes a ``VideoMAEForPreTraining`` folder, a fine-tuned one a
``VideoMAEForVideoClassification`` folder; image_size, patch_size, num_frames and tubelet_size come from
the checkpoint's stored grid, so any patch granularity exports as it was trained. VideoMAE's own checkpoints
record no grid: it is inferred from their tensors as ``--finetune`` infers it (16 frames at 224 px assumed
where the tensors do not tell).

    python scripts/export_hf.py output/pretrain/checkpoint-799.pth hf/videomae-patches-pretrain
    python scripts/export_hf.py output/finetune/checkpoint-best.pth hf/videomae-patches-k400 --labels classes.txt

    # then, in Python:
    from transformers import VideoMAEForPreTraining
    model = VideoMAEForPreTraining.from_pretrained("hf/videomae-patches-pretrain")

The reverse: pass such a folder to ``run_class_finetuning.py --finetune``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from patches.checkpoints.errors import CheckpointError, ExportError
from patches.checkpoints.hf_videomae import export_to_hf
from patches.checkpoints.reading import read_any_checkpoint
from patches.checkpoints.source_grid import inferred_grid
from patches.cli.exits import exits_on_error
from patches.errors import UsageError
from patches.grid import GridError, recorded_grid


@exits_on_error
def main(argv: list[str] | None = None) -> Path:
    """Exit statuses as every tool's (:mod:`patches.cli.exits`): 2 for a path that cannot be used, 1 when the
    checkpoint cannot be read or exported."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="our checkpoint (.pth, or .safetensors written with --save_safetensors), or VideoMAE's")
    p.add_argument("out_dir", help="folder to write config.json and model.safetensors into")
    p.add_argument("--model_key", default="model",
                   help="key of the state dict inside a .pth checkpoint ('module' is tried too)")
    p.add_argument("--num_heads", type=int, default=None,
                   help="encoder attention heads (default: from the checkpoint's --model size)")
    p.add_argument("--decoder_num_heads", type=int, default=None,
                   help="decoder attention heads (default: from the checkpoint's --model size)")
    p.add_argument("--labels", default=None,
                   help="text file with one class name per line, for a classifier's id2label")
    args = p.parse_args(argv)
    path = Path(args.checkpoint)
    check_paths(path, args.labels, Path(args.out_dir))
    try:
        ckpt = read_any_checkpoint(path).contents
        if args.model_key != "model" and args.model_key in ckpt:
            ckpt["model"] = ckpt[args.model_key]
        if isinstance(ckpt.get("args"), argparse.Namespace):  # VideoMAE's flags: the model name tells its heads
            ckpt = {**ckpt, "args": vars(ckpt["args"])}
        if recorded_grid(ckpt) is None:  # VideoMAE's own checkpoints: the grid as --finetune infers it
            grid, note = inferred_grid(ckpt, f"{args.model_key}|module")
            if grid is not None:
                ckpt = {**ckpt, "model": ckpt.get("model", ckpt.get("module")), "grid": grid.to_dict()}
                print(f"{path}: patch grid {note}")
        labels = None
        if args.labels:
            labels = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
        out = export_to_hf(ckpt, args.out_dir, args.num_heads, args.decoder_num_heads, labels)
    except (CheckpointError, ExportError, GridError, OSError, ValueError) as e:
        if getattr(e, "exit_status", 1) == 2:
            raise UsageError(f"{path}: {e}") from None
        raise SystemExit(f"error: {path}: {e}")
    kind = "VideoMAEForPreTraining" if any(k.startswith("encoder.") for k in ckpt["model"]) \
        else "VideoMAEForVideoClassification"
    print(f"Wrote {out}/config.json and model.safetensors: load with transformers.{kind}.from_pretrained('{out}')")
    return out


def check_paths(checkpoint: Path, labels: str | None, out_dir: Path) -> None:
    """Refuse, before reading anything, a checkpoint or labels file that is not there and an output that is a file."""
    if not checkpoint.exists():
        raise UsageError(f"{checkpoint}: no such checkpoint file or folder")
    if labels and not Path(labels).is_file():
        raise UsageError(f"--labels {labels}: no such file")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: the output must be a folder, and this is a file")


if __name__ == "__main__":
    main()
