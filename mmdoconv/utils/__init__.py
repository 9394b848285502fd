"""Checkpoint safety, the reference-layer converter and tool helpers."""
from .checkpoint import (InvalidCheckpointError, UnsafeCheckpointError,
                         load_checkpoint_file, load_checkpoint_url,
                         register_safe_loaders, save_folded_checkpoint)
from .reference_converter import convert_reference_state_dict

__all__ = [
    'InvalidCheckpointError', 'UnsafeCheckpointError', 'load_checkpoint_file',
    'load_checkpoint_url', 'register_safe_loaders', 'save_folded_checkpoint',
    'convert_reference_state_dict'
]
