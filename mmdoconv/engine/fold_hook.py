"""DOConvFoldHook: evaluate, test and deploy DO-Conv models as plain convs."""
import logging
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..cnn.doconv import DOConvLayer
from ..deploy.fold import swap_in_folded
from ..utils.checkpoint import load_checkpoint_file, save_folded_checkpoint
from ..utils.compare import max_abs_difference

DATA_BATCH = Optional[Sequence[dict]]


@HOOKS.register_module()
class DOConvFoldHook(Hook):
    """Fold DO-Conv layers for validation, testing and deployment.

    - **Validation during training** (``fold_val``): before the first val
      iteration every DO-Conv layer is replaced by its folded
      ``nn.Conv2d``; after the val epoch the original layers are put back.
      Folding only reads ``W`` and ``D``, so training resumes with them and
      the optimizer state untouched, bit for bit.
    - **Test** (``fold_test``, used by ``tools/test.py --deploy``): the same
      around the test loop, and one log line "folded N DO-Conv layers (max
      |Δ| on a probe batch: x)" comparing the unfolded and folded model's
      ``mode='tensor'`` outputs on the first test batch.
    - **After training** (``save_folded``): writes a deploy checkpoint next to
      the last checkpoint, ``<name><suffix>.pth``, whose ``state_dict`` has
      no ``D`` and loads with ``strict=True`` into the same model built with
      plain convs.  With EMAHook that is the folded EMA weights, since
      EMAHook stores them as the checkpoint's ``state_dict``.

    Args:
        fold_val: Fold during validation. Defaults to True.
        fold_test: Fold during test. Defaults to True.
        save_folded: Write the deploy checkpoint after training.
            Defaults to True.
        suffix: Appended to the last checkpoint's file stem for the deploy
            checkpoint. Defaults to ``'_folded'``.
        out_dir: Folder for the deploy checkpoint; defaults to the folder of
            the last checkpoint.

    Note:
        Folding happens in ``before_val_iter``/``before_test_iter`` of the
        first batch, after every hook's ``before_*_epoch`` (EMAHook swaps the
        averaged weights in there), and the originals return in
        ``after_*_epoch`` at priority ABOVE_NORMAL, before EMAHook (NORMAL)
        swaps its weights back over the same parameters.

    Example:
        >>> custom_hooks = [dict(type='DOConvFoldHook')]
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 fold_val: bool = True,
                 fold_test: bool = True,
                 save_folded: bool = True,
                 suffix: str = '_folded',
                 out_dir: Optional[str] = None) -> None:
        if not suffix or osp.sep in suffix:
            raise ValueError(f'suffix must be a non-empty file-name part, '
                             f'but got {suffix!r}')
        self.fold_val = fold_val
        self.fold_test = fold_test
        self.save_folded = save_folded
        self.suffix = suffix
        self.out_dir = out_dir
        self._swapped: List[Tuple[nn.Module, str, DOConvLayer]] = []
        self._warned_no_doconv = False
        self.folded_checkpoint: Optional[str] = None

    @staticmethod
    def _model(runner) -> nn.Module:
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def _has_doconv(self, runner) -> bool:
        if any(isinstance(m, DOConvLayer)
               for m in self._model(runner).modules()):
            return True
        if not self._warned_no_doconv:
            print_log('DOConvFoldHook: the model has no DO-Conv layer; '
                      'nothing to fold', 'current', logging.WARNING)
            self._warned_no_doconv = True
        return False

    def _fold(self, runner) -> int:
        self._swapped = swap_in_folded(self._model(runner))
        return len({id(layer) for _, _, layer in self._swapped})

    def _restore(self) -> None:
        for parent, name, original in self._swapped:
            setattr(parent, name, original)
        self._swapped = []

    def before_val_iter(self, runner, batch_idx: int,
                        data_batch: DATA_BATCH = None) -> None:
        if self.fold_val and batch_idx == 0 and self._has_doconv(runner):
            count = self._fold(runner)
            print_log(f'DOConvFoldHook: validating with {count} folded '
                      'DO-Conv layers', 'current', logging.DEBUG)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._restore()

    @torch.no_grad()
    def before_test_iter(self, runner, batch_idx: int,
                         data_batch: DATA_BATCH = None) -> None:
        if not (self.fold_test and batch_idx == 0
                and self._has_doconv(runner)):
            return
        model = self._model(runner)
        probe = None
        if isinstance(model, BaseTTAModel):
            # A TTA batch is a list of augmented batches, which the wrapped
            # model's mode='tensor' forward does not take.
            print_log('DOConvFoldHook: no probe batch for a TTA model',
                      'current', logging.DEBUG)
        elif data_batch is not None:
            try:
                data = model.data_preprocessor(data_batch, False)
                probe = model(**data, mode='tensor')
            except Exception as error:  # the probe is a report, not a gate
                print_log(f'DOConvFoldHook: probe skipped ({error!r})',
                          'current', logging.WARNING)
        count = self._fold(runner)
        delta = 'n/a'
        if probe is not None:
            delta = f'{max_abs_difference(probe, model(**data, mode="tensor")):.3g}'
        print_log(f'folded {count} DO-Conv layers '
                  f'(max |Δ| on a probe batch: {delta})', 'current')

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._restore()

    def after_train(self, runner) -> None:
        if not self.save_folded or not is_main_process():
            return
        if not self._has_doconv(runner):
            return
        last_file = osp.join(runner.work_dir, 'last_checkpoint')
        if not osp.isfile(last_file):
            print_log('DOConvFoldHook: no checkpoint was saved, so no '
                      'deploy checkpoint is written', 'current',
                      logging.WARNING)
            return
        with open(last_file) as f:
            last_checkpoint = f.read().strip()
        checkpoint = load_checkpoint_file(last_checkpoint)
        stem = osp.splitext(osp.basename(last_checkpoint))[0]
        out_dir = self.out_dir or osp.dirname(last_checkpoint)
        out_path = osp.join(out_dir, f'{stem}{self.suffix}.pth')
        save_folded_checkpoint(checkpoint, out_path)
        self.folded_checkpoint = out_path
        print_log(f'DOConvFoldHook: wrote deploy checkpoint {out_path}',
                  'current')
