"""Compiled and fused kernels (C++ on CPU, Triton on CUDA) with pure-PyTorch fallbacks."""
