# mmpretrain's CIFAR-100 recipe (4-pixel padding, 32x32 random crop,
# horizontal flip) at batch 128, read by mmdoconv's SafeCIFAR100: the same
# cifar-*-python layout, unpickled without running code from the files.
_base_ = ['mmpretrain::_base_/datasets/cifar100_bs16.py']
custom_imports = dict(imports=['mmdoconv'], allow_failed_imports=False)
train_dataloader = dict(batch_size=128, dataset=dict(type='SafeCIFAR100'))
val_dataloader = dict(batch_size=128, dataset=dict(type='SafeCIFAR100'))
test_dataloader = val_dataloader
