"""Folding DO-Conv into plain convolutions, plain configs and ONNX export."""
from .fold import count_doconv, fold_doconv, fold_state_dict, swap_in_folded
from .plain_config import fold_checkpoint, plain_config

__all__ = [
    'count_doconv', 'fold_doconv', 'fold_state_dict', 'swap_in_folded',
    'fold_checkpoint', 'plain_config'
]
