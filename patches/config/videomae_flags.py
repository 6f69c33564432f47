"""VideoMAE's run-script flags that PATCHES's own flags do not cover: accepted with VideoMAE's meaning, or
refused with one line naming the PATCHES equivalent (never argparse's bare "unrecognized arguments").

A refused flag is noted on the parsed namespace (``videomae_refusals``, only present when one was given);
:func:`refuse_videomae_flags` raises the :class:`UsageError` before any work, at the start of resolution.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from patches.errors import UsageError

REFUSALS = "videomae_refusals"

# VideoMAE's flag -> why PATCHES does not take it, and what to use instead (one line each).
REFUSED_SWITCHES = {
    "--dist_on_itp": "--dist_on_itp reads OpenMPI's OMPI_COMM_WORLD_* variables, which PATCHES does not: launch "
                     "with torchrun or srun (scripts/launch/torchrun.sh, slurm.sbatch), which set RANK/WORLD_SIZE "
                     "or SLURM_PROCID/SLURM_NTASKS",
    "--no_save_ckpt": "--no_save_ckpt is refused: PATCHES always writes epoch checkpoints (resuming and the test "
                      "of the best checkpoint read them); for the fewest files use --save_ckpt_freq EPOCHS "
                      "--keep_ckpts 1",
    "--deepscale": "--deepscale is DeepSpeed's deprecated name of --deepspeed: use --enable_deepspeed",
}
REFUSED_VALUES = {
    "--deepscale_config": "--deepscale_config is DeepSpeed's deprecated name of --deepspeed_config: PATCHES "
                          "generates the DeepSpeed config from --zero_stage, --amp, --clip_grad and --update_freq",
}


class _Refuse(argparse.Action):
    """Notes the flag's one-line refusal on the namespace (raised by :func:`refuse_videomae_flags`)."""

    def __init__(self, option_strings: list[str], dest: str, message: str, **kwargs: Any) -> None:
        self.message = message
        super().__init__(option_strings, dest=REFUSALS, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        note_refusal(namespace, self.message)


class StoreOrRefuse(argparse.Action):
    """Stores the value, unless ``refusal(value)`` gives a message: then notes that refusal instead."""

    def __init__(self, option_strings: list[str], dest: str, refusal: Callable[[Any], str | None],
                 **kwargs: Any) -> None:
        self.refusal = refusal
        super().__init__(option_strings, dest=dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        message = self.refusal(values)
        if message:
            note_refusal(namespace, message)
        else:
            setattr(namespace, self.dest, values)


def note_refusal(namespace: argparse.Namespace, message: str) -> None:
    setattr(namespace, REFUSALS, [*getattr(namespace, REFUSALS, []), message])


def refuse_videomae_flags(args: argparse.Namespace) -> None:
    """Raise :class:`UsageError` with the first refused VideoMAE flag's one line, if one was given."""
    refusals = getattr(args, REFUSALS, [])
    if refusals:
        raise UsageError(refusals[0])


def _dist_url_refusal(url: str) -> str | None:
    if url == "env://":
        return None
    return (f"--dist_url {url}: PATCHES joins the process group from the launcher's environment (env://); set "
            f"MASTER_ADDR and MASTER_PORT instead (torchrun's --master_addr/--master_port)")


def _num_segments_refusal(count: int) -> str | None:
    if count == 1:
        return None
    return (f"--num_segments {count}: VideoMAE builds its model for num_frames x {count} frames while its data sets "
            f"give num_frames, so only 1 runs there; for longer clips raise --num_frames")


def add_videomae_args(p: argparse.ArgumentParser, finetuning: bool) -> None:
    """VideoMAE's flags with no PATCHES flag of the same name: those that mean nothing more than PATCHES does
    are accepted, the rest refused with their equivalent."""
    g = p.add_argument_group("VideoMAE's flags, for its command lines verbatim (see RECIPES.md)")
    g.add_argument("--no_pin_mem", action="store_false", dest="pin_mem", help="as --pin_mem false")
    g.add_argument("--world_size", default=None, type=int, dest="videomae_world_size",
                   help="accepted, as in VideoMAE the launcher's environment (WORLD_SIZE, SLURM_NTASKS) decides "
                        "the process count")
    g.add_argument("--dist_url", default="env://", action=StoreOrRefuse, refusal=_dist_url_refusal,
                   help="env:// only: the process group is joined from the launcher's environment")
    g.add_argument("--color_jitter", default=0.4 if finetuning else 0.0, type=float,
                   help="accepted and unused, as in VideoMAE (its scripts parse it and never read it)")
    g.add_argument("--imagenet_default_mean_and_std", action="store_true", default=True,
                   help="accepted: clips are always normalised with ImageNet's mean and std, as in VideoMAE")
    g.add_argument("--deepspeed", action="store_true", dest="deepspeed_flag",
                   help="DeepSpeed's own switch: accepted, no effect (--enable_deepspeed turns DeepSpeed on)")
    g.add_argument("--deepspeed_config", default=None, type=str,
                   help="accepted and not read, as in VideoMAE, which writes its own config over it: PATCHES "
                        "generates the DeepSpeed config from --zero_stage, --amp, --clip_grad and --update_freq")
    for flag, message in REFUSED_SWITCHES.items():
        if finetuning or flag != "--no_save_ckpt":
            g.add_argument(flag, action=_Refuse, nargs=0, message=message, help=argparse.SUPPRESS)
    for flag, message in REFUSED_VALUES.items():
        g.add_argument(flag, action=_Refuse, nargs=1, message=message, help=argparse.SUPPRESS)
    if finetuning:
        _add_finetuning_videomae_args(g)
    else:
        g.add_argument("--train_interpolation", default="bicubic", type=str,
                       help="accepted and unused, as in VideoMAE's pre-training (which has no RandAugment)")


def _add_finetuning_videomae_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--save_ckpt", action="store_true", default=True,
                   help="accepted: epoch checkpoints are always written (VideoMAE's default)")
    g.add_argument("--crop_pct", default=None, type=float,
                   help="accepted and unused, as in VideoMAE (test crops cover --short_side_size)")
    g.add_argument("--num_segments", default=1, type=int, action=StoreOrRefuse, refusal=_num_segments_refusal,
                   help="1 only, as VideoMAE runs")
    g.add_argument("--resplit", action="store_true",
                   help="accepted and unused, as in VideoMAE (random erasing has no clean split here)")


def refuse_image_folder(value: str) -> str | None:
    """``--data_set image_folder``'s refusal: VideoMAE lists it and builds no video data set for it."""
    if value != "image_folder":
        return None
    return ("--data_set image_folder: VideoMAE lists it but has no image data set for video fine-tuning; use "
            "--data_set custom with a list of videos or frame folders")

