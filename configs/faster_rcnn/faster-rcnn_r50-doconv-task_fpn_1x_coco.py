# Table 5, DO-Conv in the detection stage only: the plain ImageNet-pretrained
# ResNet-50 (torchvision) is loaded with D = I, and every non-pointwise conv
# of the detector is a DOConv2d during detection training (the paper's
# protocol): the R50 stem 7x7 and 16 bottleneck 3x3 convs, the 4 FPN 3x3 convs
# and the RPN 3x3 conv (22); 1x1 convs stay plain.  DOConvFoldHook validates
# and writes the deploy checkpoint with the folded network.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)

# The switch: the Runner converts the model right after building it.
runner_type = 'DOConvRunner'

custom_hooks = [dict(type='DOConvFoldHook')]
