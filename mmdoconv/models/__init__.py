"""OpenMMLab modules that need a DO-Conv-aware variant.

:mod:`mmdoconv` imports each only when its library (mmdet, mmpretrain) is
installed, so the layer and folding work without them.
"""
