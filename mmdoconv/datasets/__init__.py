"""Datasets read without trusting their files (mmpretrain layouts)."""
from .safe_cifar import (SafeCIFAR10, SafeCIFAR100, UnsafeDataError,
                         load_cifar_pickle)

__all__ = ['SafeCIFAR10', 'SafeCIFAR100', 'UnsafeDataError',
           'load_cifar_pickle']
