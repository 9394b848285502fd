"""A hook for distributed tests: each rank saves its DO-Conv parameters."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mmdoconv import DOConv2d


@HOOKS.register_module()
class DumpDOConvParamsHook(Hook):

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') \
            else runner.model
        params = {}
        for name, module in model.named_modules():
            if isinstance(module, DOConv2d):
                params[name + '.D'] = module.D.detach().clone()
                params[name + '.weight'] = module.weight.detach().clone()
        torch.save(params, osp.join(runner.work_dir, f'rank{get_rank()}.pth'))
