"""CPU ``--amp`` (CPUBf16OptimWrapper): bf16 in the training forward only."""
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from mmdoconv import DOConv2d
from mmdoconv.engine.amp import CPUBf16OptimWrapper


class FeatNet(BaseModel):
    """A model with ``extract_feat``, as mmdet's and mmseg's have."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = DOConv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def extract_feat(self, inputs):
        return self.conv(inputs).mean(dim=(2, 3))

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.extract_feat(inputs))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


def test_training_step_is_bf16_and_evaluation_stays_float32():
    """Fails if the wrapper leaves ``extract_feat`` autocast after the step
    (the mutation: drop the restore in ``optim_context``'s ``finally``)."""
    torch.manual_seed(0)
    model = FeatNet()
    with torch.no_grad():
        model.conv.D.normal_(0, 0.2)  # non-zero D
    wrapper = CPUBf16OptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    data = dict(inputs=torch.randn(4, 3, 8, 8),
                labels=torch.tensor([0, 1, 0, 1]))
    dtypes = []
    model.conv.register_forward_hook(
        lambda module, args, output: dtypes.append(output.dtype))
    model.train_step(data, wrapper)  # lr 0: the weights stay
    assert dtypes == [torch.bfloat16]
    assert 'extract_feat' not in model.__dict__
    model.eval()
    with torch.no_grad():
        evaluated = model.val_step(dict(inputs=data['inputs']))
        expected = model(data['inputs'])
    assert dtypes[1:] == [torch.float32, torch.float32]
    assert torch.equal(evaluated, expected)
