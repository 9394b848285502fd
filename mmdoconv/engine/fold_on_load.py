"""Loading an unfolded DO-Conv checkpoint into plain convs folds it.

mmengine loads model weights through one function,
``mmengine.runner.checkpoint.load_state_dict``: the Runner's ``load_from``
and ``resume``, ``load_checkpoint`` and ``Pretrained`` ``init_cfg`` in
mmdet's, mmseg's and mmpretrain's own tools as in ours.  A plain model given
a checkpoint with ``<layer>.D`` entries would keep ``W`` and drop ``D`` (a
non-strict load only warns of the unexpected key), and then compute with
``W`` instead of ``W'``.  Wrapped by :func:`register_fold_on_load` (run when
mmdoconv is imported), that load composes ``W'`` for every such layer
first (:func:`~mmdoconv.deploy.fold.fold_for_plain_convs`) and says so in the
log; DO-Conv layers load their ``D`` as before.
"""
import functools
import logging

import mmengine.runner
import mmengine.runner.checkpoint as mmengine_checkpoint
from mmengine.logging import print_log

from ..cnn.doconv import IncompatibleCheckpointError
from ..deploy.fold import fold_for_plain_convs


def _folding(load_state_dict):

    @functools.wraps(load_state_dict)
    def load_folded(module, state_dict, strict=False, logger=None):
        try:
            state_dict, folded = fold_for_plain_convs(module, state_dict)
        except ValueError as error:  # a malformed D entry, named
            raise IncompatibleCheckpointError(
                f'the checkpoint\'s DO-Conv entries of plain convs cannot '
                f'be folded: {error}') from None
        if folded:
            print_log(
                f'the checkpoint holds D for {len(folded)} layers that are '
                f'plain convs in {type(module).__name__} (e.g. '
                f"{folded[0]!r}): loaded them folded, W' = D^T o W",
                logger='current', level=logging.WARNING)
        return load_state_dict(module, state_dict, strict, logger)

    load_folded.mmdoconv_fold_on_load = True
    return load_folded


def register_fold_on_load() -> None:
    """Make mmengine's ``load_state_dict`` fold DO-Conv entries of plain
    convs (idempotent)."""
    original = mmengine_checkpoint.load_state_dict
    if getattr(original, 'mmdoconv_fold_on_load', False):
        return
    folding = _folding(original)
    mmengine_checkpoint.load_state_dict = folding
    # The same function, as mmengine.runner exports it.
    mmengine.runner.load_state_dict = folding
