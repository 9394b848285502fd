# The classifier of He et al.'s CIFAR networks: backbone, global average
# pooling, one FC layer (the network configs set the backbone, the head's
# input width and the number of classes).
model = dict(
    type='ImageClassifier',
    backbone=dict(type='CIFARResNet', depth=20),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
