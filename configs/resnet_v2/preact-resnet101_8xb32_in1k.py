# ResNet-v2-101 baseline (paper Table 2): the pre-activation ResNet of He et
# al. 2016 ("Identity mappings"), registered by mmdoconv, on mmpretrain's
# ResNet-101 recipe.
_base_ = ['mmpretrain::resnet/resnet101_8xb32_in1k.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

model = dict(backbone=dict(_delete_=True, type='PreActResNet', depth=101))
