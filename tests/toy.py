"""A tiny model, dataset and metric for Runner tests of the hooks and tools."""
import uuid

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

from mmdoconv import DOConv2d


class ToyDataset(Dataset):
    """Deterministic 3x8x8 images; the label says whether channel 0 is bright."""

    def __init__(self, size: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(size, 3, 8, 8, generator=generator)
        self.labels = (self.inputs[:, 0].mean(dim=(1, 2)) > 0).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], labels=self.labels[index])


class ToyNet(BaseModel):
    """Two 3x3 convs (one grouped), BN, a 1x1 conv and a linear head."""

    def __init__(self, conv: type = DOConv2d) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            conv(8, 8, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, 2))

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.body(inputs)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        if mode == 'predict':
            return [(logit, label) for logit, label in zip(logits, labels)]
        return logits


class ToyMetric(BaseMetric):
    """Accuracy, plus a checksum of the predicted classes."""
    default_prefix = 'toy'

    def process(self, data_batch, data_samples) -> None:
        for logit, label in data_samples:
            self.results.append((int(logit.argmax()), int(label)))

    def compute_metrics(self, results) -> dict:
        correct = sum(pred == label for pred, label in results)
        return dict(
            accuracy=correct / len(results),
            predictions=sum(pred * 2**i for i, (pred, _) in enumerate(results)))


def toy_runner(work_dir, *, max_iters=4, val_interval=2, custom_hooks=(),
               model=None, seed=0, **kwargs):
    """A Runner training ToyNet with SGD + momentum and validating it."""
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    loader = dict(
        dataset=ToyDataset(),
        sampler=dict(type='DefaultSampler', shuffle=False),
        batch_size=4,
        collate_fn=dict(type='default_collate'),
        num_workers=0)
    if model is None:
        torch.manual_seed(seed)  # the Runner seeds only after it has a model
        model = ToyNet()
    return Runner(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=loader,
        val_dataloader=loader,
        test_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters,
                       val_interval=val_interval),
        val_cfg=dict(),
        test_cfg=dict(),
        val_evaluator=Evaluator(ToyMetric()),
        test_evaluator=Evaluator(ToyMetric()),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9,
                           weight_decay=1e-4)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=list(custom_hooks),
        randomness=dict(seed=seed, deterministic=True),
        default_scope='mmengine',
        experiment_name=f'toy_{uuid.uuid4().hex[:12]}',
        **kwargs)
