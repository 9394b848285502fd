# Baseline of the paper's Table 5: mmdet's Faster R-CNN R50-FPN 1x as it is,
# so baseline and DO-Conv runs share one protocol.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
