# MobileNet v1 baseline (paper Table 3, DO-DConv): Howard et al. 2017,
# registered by mmdoconv, on mmpretrain's MobileNet v2 recipe.
_base_ = ['mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, type='MobileNetV1'),
    head=dict(in_channels=1024))
