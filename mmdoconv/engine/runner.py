"""One config line that puts DO-Conv into any model the Runner builds.

.. code-block:: python

    runner_type = 'DOConvRunner'
    # optional: doconv = dict(include=None, exclude=None, D_mul=None,
    #                         D_init='identity', recompute_kernel=True,
    #                         max_d_params=None, kinds=None)

mmdet's, mmseg's and mmpretrain's own ``tools/train.py`` and ``tools/test.py``
build ``RUNNERS.build(cfg)`` when a config names a ``runner_type``, so the
switch works through them as through ours.  The model is converted right
after it is built: before its weights are initialised or loaded (plain
pretrained checkpoints load with D = I), before the optimizer is built (it
sees D) and before it is wrapped for DDP.  The deploy config of such a config
is the same config without the switch.
"""
import logging
from typing import Any, Dict, Optional

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from torch import nn

from ..cnn.conversion import ConversionReport, convert_to_doconv
from .conv_bn_eval import turn_on_efficient_conv_bn_eval

#: The options the switch takes (``doconv = dict(...)`` in a config).
SWITCH_OPTIONS = ('include', 'exclude', 'D_mul', 'D_init',
                  'recompute_kernel', 'max_d_params', 'kinds')


def doconv_options(cfg: Config) -> Dict[str, Any]:
    """The checked ``doconv`` options of a config (empty when absent).

    Raises:
        ValueError: For an option the switch does not take.
    """
    options = dict(cfg.get('doconv') or {})
    unknown = sorted(set(options) - set(SWITCH_OPTIONS))
    if unknown:
        raise ValueError(f'doconv options {unknown} are not known; the '
                         f'switch takes {list(SWITCH_OPTIONS)}')
    return options


def _convert(model: nn.Module, cfg: Config) -> ConversionReport:
    """Convert ``model`` with the config's ``doconv`` options, logged."""
    report = convert_to_doconv(model, **doconv_options(cfg))
    print_log(f'DOConvRunner: {report}', 'current', logging.INFO)
    return report


def apply_doconv_switch(model: nn.Module,
                        cfg: Config) -> Optional[ConversionReport]:
    """Convert ``model`` as a config's switch says (what
    :class:`DOConvRunner` does); None without a switch."""
    if cfg.get('runner_type') != 'DOConvRunner':
        return None
    return _convert(model, cfg)


@RUNNERS.register_module()
class DOConvRunner(Runner):
    """mmengine's Runner, with every non-pointwise conv of the model made
    DO-Conv (:func:`~mmdoconv.convert_to_doconv`) as soon as it is built."""

    def build_model(self, model) -> nn.Module:
        model = super().build_model(model)
        self.doconv_report = _convert(model, self.cfg)
        return model

    def train(self) -> nn.Module:
        # mmengine's efficient_conv_bn_eval option traces DO-Conv layers
        # into function calls it cannot pair with their BN: take the option
        # over and apply it where mmengine would (after the weights are
        # initialised, before checkpoints are loaded).
        self._conv_bn_eval_modules = self.cfg.pop('efficient_conv_bn_eval',
                                                  None)
        return super().train()

    def load_or_resume(self) -> None:
        modules = getattr(self, '_conv_bn_eval_modules', None)
        if modules is not None:
            self._conv_bn_eval_modules = None
            self.logger.info('Enabling the "efficient_conv_bn_eval" feature '
                             f'for sub-modules: {modules} (DO-Conv aware)')
            model = self.model.module if hasattr(self.model, 'module') \
                else self.model
            turn_on_efficient_conv_bn_eval(model, modules)
        super().load_or_resume()
