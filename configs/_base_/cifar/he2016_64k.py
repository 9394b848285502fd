# He et al.'s CIFAR schedule (CVPR 2016, §4.2; ECCV 2016 for ResNet-v2):
# batch 128 on one GPU, SGD lr 0.1, momentum 0.9, weight decay 1e-4,
# 64k iterations, lr / 10 at 32k and 48k.  Validation once per epoch of the
# 50k training images (391 iterations), for the paper's statistic: the mean
# top-1 of the last five epochs (tools/analysis_tools/cifar_summary.py).
_base_ = ['mmpretrain::_base_/default_runtime.py']
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001))
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, milestones=[32000, 48000],
         gamma=0.1)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=64000, val_interval=391)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3910,
                    max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(base_batch_size=128)
