"""Checkpoints: reading any format, choosing one in an output folder, building the model one describes, loading
weights for fine-tuning at any grid, saving a run's checkpoints, and resume state.

Reading (reading.py), every ``torch.load`` with ``weights_only=True``:
    read_any_checkpoint(path) -> LoadedCheckpoint     any format: .pth (ours, VideoMAE's), .safetensors,
                                                      a transformers folder, a DeepSpeed checkpoint folder
    read_pth_checkpoint(path) -> dict                 a torch.save file, checksum verified
    read_safetensors_checkpoint(path) -> dict         a .safetensors file, grid and flags from its metadata
    checkpoint_fingerprint(path) -> str               SHA-256 of a file or folder
Building the model a checkpoint describes (models.py):
    model_from_checkpoint(path_or_loaded, ...) -> CheckpointModel(model, grid, settings, checkpoint, report)
    pretrain_model_from_checkpoint(path_or_loaded) -> PretrainModel(model, grid, recorded_args, trained_grids)
Fine-tuning at any grid (finetune_weights.py): load_finetune_weights(model, path_or_loaded, ...) -> LoadReport
    with source_grid.py (a checkpoint's grid), resampling.py (kernel, position table), state_dict_names.py,
    pos_embed_loading.py and load_report.py.
Choosing in an output folder (folder.py): choose_resume_checkpoint, find_checkpoint, best_checkpoint_file,
    latest_checkpoint_file, checkpoint_to_evaluate, epoch_checkpoint_files; and upkeep (link, prune, leftovers).
Exact loading for resume and evaluation (model_state.py): load_model_state, check_model_state,
    check_checkpoint_grid, apply_pos_reference.
Saving (writing.py): save_checkpoint, checkpoint_state, save_safetensors; a run's saves (run_checkpoints.py):
    RunCheckpoints, restore_training_state; DeepSpeed folders (deepspeed_folder.py).
Resume state (resume_state.py): positions (resume_position, start_position, position_fields) and RNG states.
transformers interop (hf_videomae.py). Errors (errors.py): CheckpointError, CheckpointSaveError, ExportError,
    all patches.errors.PatchesError.

Nothing is imported here, so that importing one module does not import them all.
"""
