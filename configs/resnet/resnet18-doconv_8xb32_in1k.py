# ResNet-v1b-18 (stride on the 3x3 conv) with DO-Conv (paper §4 protocol: every non-pointwise conv,
# nothing else changed): the baseline beside it plus the switch.
_base_ = ['./resnet18_8xb32_in1k.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The switch: every non-pointwise conv becomes DO-Conv when the Runner builds
# the model; DOConvFoldHook validates folded and writes the deploy checkpoint.
runner_type = 'DOConvRunner'
custom_hooks = [dict(type='DOConvFoldHook')]
