# Plain-18 baseline (paper Table 2): ResNet-18 without shortcuts, registered
# by mmdoconv, on mmpretrain's ResNet-18 recipe.
_base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='PlainResNet', depth=18))
