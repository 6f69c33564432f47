"""The model a checkpoint describes, built at its grid with its weights loaded.

:func:`model_from_checkpoint` takes any checkpoint :func:`reading.read_any_checkpoint` reads (pre-training or
fine-tuning, ours or VideoMAE's, ``.pth``, ``.safetensors`` or a transformers folder) and builds the video
classifier (the encoder, with its head when it has one) that extract_features.py and run_inference.py use; for
a probe checkpoint, the frozen encoder it names with its probe.
Every setting the caller leaves out (None) is the checkpoint's own: its recorded grid and flags, else what its
tensors tell, else VideoMAE's default. :func:`pretrain_model_from_checkpoint` builds the whole masked
autoencoder (encoder and decoder) of a pre-training checkpoint, as run_videomae_vis.py needs it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from patches.checkpoints.errors import CheckpointError
from patches.checkpoints.finetune_weights import load_finetune_weights
from patches.checkpoints.load_report import LoadReport
from patches.checkpoints.model_state import apply_pos_reference
from patches.checkpoints.reading import LoadedCheckpoint, checkpoint_fingerprint, read_any_checkpoint
from patches.checkpoints.source_grid import inferred_grid
from patches.grid import PatchGrid
from patches.models.registry import VIT_SIZES

# What a checkpoint that records nothing about itself is taken to be: VideoMAE's defaults.
DEFAULT_POS_EMBED = "1d"
DEFAULT_SAMPLING_RATE = 4


@dataclass(frozen=True)
class ModelSettings:
    """What a model built from a checkpoint was built with: each value the caller's, else the checkpoint's.

    ``model_name``: the registered classifier name (``vit_base_patch16_224``); ``num_classes``: the head's
    classes (0: no head, features only); ``sampling_rate``: the frame stride it was trained with (recorded, else
    VideoMAE's 4); ``class_names``: recorded with a fine-tuned classifier (or a transformers folder's labels);
    ``kind``: the checkpoint's (see :attr:`LoadedCheckpoint.kind`); ``grid_note``: how its grid is known.
    """

    model_name: str
    grid: PatchGrid
    pos_embed: str
    use_mean_pooling: bool
    num_classes: int
    sampling_rate: int
    class_names: tuple[str, ...] | None
    kind: str
    grid_note: str = ""


@dataclass(frozen=True)
class CheckpointModel:
    """:func:`model_from_checkpoint`'s result: the model (in eval mode, on the CPU), its grid, the settings it
    was built with, the checkpoint read, and the load report (what was done with every tensor)."""

    model: torch.nn.Module
    grid: PatchGrid
    settings: ModelSettings
    checkpoint: LoadedCheckpoint
    report: LoadReport


def classifier_name(name: str) -> str:
    """A pre-training model's classifier name (``pretrain_videomae_micro_patch16_224`` -> ``vit_micro_...``)."""
    return "vit_" + name.removeprefix("pretrain_videomae_") if name.startswith("pretrain_videomae_") else name


def _name_from_tensors(loaded: LoadedCheckpoint) -> str:
    """The named size whose width and depth the checkpoint's encoder has, as a classifier name."""
    sd = {re.sub(r"^(module\.|_orig_mod\.|encoder\.)+", "", str(k)): v for k, v in (loaded.model_state or {}).items()}
    weight = sd.get("patch_embed.proj.weight")
    depth = len({m.group(1) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))})
    for size, dims in VIT_SIZES.items():
        if weight is not None and (dims["embed_dim"], dims["depth"]) == (int(weight.shape[0]), depth):
            return f"vit_{size}_patch16_224"
    width = "no patch embedding" if weight is None else f"width {int(weight.shape[0])}, depth {depth}"
    raise CheckpointError(f"{loaded.path} records no --model and its encoder ({width}) is none of the named "
                          f"sizes ({', '.join(VIT_SIZES)}); pass the model name")


def _head_classes(loaded: LoadedCheckpoint) -> int:
    head = (loaded.model_state or {}).get("head.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) else 0


def checkpoint_settings(loaded: LoadedCheckpoint, model_name: str | None = None, grid: PatchGrid | None = None,
                        pos_embed: str | None = None, use_mean_pooling: bool | None = None,
                        num_classes: int | None = None, model_key: str = "model|module") -> ModelSettings:
    """The settings to build ``loaded``'s model with: those given, the rest from the checkpoint (see
    :class:`ModelSettings`). Raises :class:`CheckpointError` when its grid or model cannot be told."""
    recorded, note = loaded.recorded_args, ""
    if grid is None:
        grid = loaded.recorded_grid()
        if grid is None:
            grid, note = inferred_grid(loaded.contents, model_key)
        if grid is None:
            raise CheckpointError(f"{loaded.path} records no patch grid and holds no patch embedding to infer one")
    name = model_name or (classifier_name(str(recorded["model"])) if recorded.get("model") else
                          _name_from_tensors(loaded))
    names = loaded.contents.get("class_names")
    return ModelSettings(
        model_name=name, grid=grid,
        pos_embed=pos_embed or recorded.get("pos_embed") or ("3d" if "pos_reference" in loaded.contents
                                                             else DEFAULT_POS_EMBED),
        use_mean_pooling=(use_mean_pooling if use_mean_pooling is not None
                          else recorded.get("use_mean_pooling") is not False),
        num_classes=_head_classes(loaded) if num_classes is None else num_classes,
        sampling_rate=int(recorded.get("sampling_rate") or DEFAULT_SAMPLING_RATE),
        class_names=tuple(str(n) for n in names) if isinstance(names, list) else None,
        kind=loaded.kind, grid_note=note)


def model_from_checkpoint(source: str | Path | LoadedCheckpoint, model_name: str | None = None,
                          grid: PatchGrid | None = None, pos_embed: str | None = None,
                          use_mean_pooling: bool | None = None, num_classes: int | None = None,
                          model_key: str = "model|module", model_prefix: str = "", verbose: bool = False
                          ) -> CheckpointModel:
    """The video classifier ``source`` (a path in any format, or a checkpoint already read) describes, with its
    weights, in eval mode on the CPU.

    Each setting left None is the checkpoint's (:func:`checkpoint_settings`): its grid (give another ``grid`` to
    run at it: the weights are adapted as ``--finetune`` adapts them), model, position table, pooling, and its
    head's classes (``num_classes=0``: no head, for features). ``model_key``/``model_prefix``: where the state
    dict is and a prefix to strip, as ``--finetune`` takes them. A probe checkpoint gives a
    :class:`FrozenEncoderProbe` over the encoder it records (its settings are the probe's run's). ``verbose``
    prints the load report. Raises :class:`CheckpointError` naming the file when it cannot be read or does not fit.
    """
    from patches.models.factory import create_video_model
    loaded = source if isinstance(source, LoadedCheckpoint) else read_any_checkpoint(source)
    if loaded.kind == "probe":
        return _probe_from_checkpoint(loaded, verbose)
    settings = checkpoint_settings(loaded, model_name, grid, pos_embed, use_mean_pooling, num_classes, model_key)
    try:
        model = create_video_model(settings.model_name, grid=settings.grid, num_classes=settings.num_classes,
                                   pos_embed=settings.pos_embed, use_mean_pooling=settings.use_mean_pooling)
    except ValueError as e:  # an unknown model name
        raise CheckpointError(f"{loaded.path}: {e}") from None
    report = load_finetune_weights(model, loaded, model_key=model_key, model_prefix=model_prefix, verbose=verbose)
    return CheckpointModel(model.eval(), settings.grid, settings, loaded, report)


def _probe_from_checkpoint(loaded: LoadedCheckpoint, verbose: bool) -> CheckpointModel:
    """A probe checkpoint's model: the encoder it records (read from its own checkpoint, which must be unchanged),
    built as the probe's run built it, frozen, with the probe's weights."""
    from patches.models.probes import FrozenEncoderProbe, build_probe
    reference, args = loaded.contents.get("encoder") or {}, loaded.recorded_args
    encoder_path = reference.get("path")
    if not encoder_path or not Path(encoder_path).exists():
        raise CheckpointError(f"{loaded.path} is a probe checkpoint: it holds the probe only, and the encoder it "
                              f"reads ({encoder_path or 'not recorded'}) is not there")
    if reference.get("sha256") and checkpoint_fingerprint(encoder_path) != reference["sha256"]:
        raise CheckpointError(f"{loaded.path}: its encoder {encoder_path} has changed since the probe was trained "
                              f"(another SHA-256)")
    encoder = model_from_checkpoint(
        encoder_path, model_name=classifier_name(str(args["model"])) if args.get("model") else None,
        grid=loaded.recorded_grid(), pos_embed=args.get("pos_embed"), use_mean_pooling=args.get("use_mean_pooling"),
        num_classes=0, model_key=args.get("model_key") or "model|module", model_prefix=args.get("model_prefix") or "",
        verbose=verbose)
    num_classes = int(loaded.contents.get("nb_classes") or 0)
    try:
        model = FrozenEncoderProbe(encoder.model, build_probe(str(loaded.contents["probe"]), encoder.model,
                                                              num_classes))
        model.load_state_dict(loaded.model_state or {})
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{loaded.path}: its probe does not load ({str(e).splitlines()[0]})") from None
    own = checkpoint_settings(loaded, encoder.settings.model_name, encoder.grid, encoder.settings.pos_embed,
                              encoder.settings.use_mean_pooling, num_classes)
    return CheckpointModel(model.eval(), encoder.grid, own, loaded, encoder.report)


@dataclass(frozen=True)
class PretrainModel:
    """:func:`pretrain_model_from_checkpoint`'s result: the masked autoencoder (eval mode), its grid, the flags
    the checkpoint records, and the grids it was trained on (several for a flexible-grid pre-training)."""

    model: torch.nn.Module
    grid: PatchGrid
    recorded_args: dict[str, Any]
    trained_grids: list[PatchGrid]


def _pretrain_name(args: dict[str, Any], sd: dict[str, torch.Tensor]) -> str:
    """The registered model name: the checkpoint's --model, else the size whose widths match the weights."""
    name = str(args.get("model", ""))
    if name.startswith("pretrain_videomae_"):
        return name
    width, dec_width = sd["encoder.patch_embed.proj.weight"].shape[0], sd["encoder_to_decoder.weight"].shape[0]
    for size, dims in VIT_SIZES.items():
        if (dims["embed_dim"], dims["decoder_embed_dim"]) == (width, dec_width):
            return f"pretrain_videomae_{size}_patch16_224"
    raise CheckpointError(f"no model size has encoder width {width} and decoder width {dec_width}")


def pretrain_model_from_checkpoint(source: str | Path | LoadedCheckpoint) -> PretrainModel:
    """The masked autoencoder of a pre-training checkpoint (any format :func:`read_any_checkpoint` reads), at its
    grid (recorded, else inferred as ``--finetune`` infers it), in eval mode on the CPU; :class:`CheckpointError`
    when the checkpoint is not a pre-training one or does not fit."""
    from patches.models.factory import create_video_model
    loaded = source if isinstance(source, LoadedCheckpoint) else read_any_checkpoint(source)
    path, sd = loaded.path, loaded.contents.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds no 'model' state dict")
    grid = loaded.recorded_grid()
    if grid is None:  # VideoMAE's own checkpoints: inferred from the tensors, as --finetune does
        grid, note = inferred_grid(loaded.contents)
        if grid is None:
            raise CheckpointError(f"{path} records no patch grid and holds no patch embedding to infer one from")
        print(f"{path}: patch grid {note}")
    if "encoder_to_decoder.weight" not in sd:
        raise CheckpointError(f"{path} is not a pre-training checkpoint (it has no decoder to reconstruct with)")
    args = loaded.contents.get("args") if isinstance(loaded.contents.get("args"), dict) else {}
    decoder_depth = len({m.group(1) for k in sd if (m := re.match(r"^decoder\.blocks\.(\d+)\.", k))})
    model = create_video_model(_pretrain_name(args, sd), grid=grid, decoder_depth=decoder_depth,
                               pos_embed=args.get("pos_embed") or ("3d" if "pos_reference" in loaded.contents
                                                                   else "1d"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {args.get('model', 'the model')} at its grid "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    apply_pos_reference(model, loaded.contents)
    try:
        trained = [PatchGrid.from_dict(g) for g in loaded.contents.get("grids") or [grid.to_dict()]]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its 'grids' record is unusable ({e})") from None
    return PretrainModel(model.eval(), grid, args, trained)
