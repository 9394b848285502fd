"""Build, cache and load the fused composition's C++ extension.

The extension is one source file (``csrc/compose.cpp``), compiled against the
installed torch by the project's setup step (``python -m mmdoconv.ops.build``,
run by ``tools/setup_env.sh``) into a cache folder keyed by the torch version,
the Python version and a hash of the source, as the mmcv wheel is.  Importing
mmdoconv never compiles anything: :func:`load_extension` loads a cached build
or says why there is none, and the layer then composes with pure PyTorch.
"""
import hashlib
import importlib.machinery
import importlib.util
import os
import os.path as osp
import sys
from types import ModuleType
from typing import Optional, Tuple

import torch

EXTENSION_NAME = 'mmdoconv_compose_cpu'
SOURCE = osp.join(osp.dirname(__file__), 'csrc', 'compose.cpp')
# -fopenmp: at::parallel_for is OpenMP in PyTorch's builds and compiles to a
# serial loop without it.  The library links libgomp.so.1, which resolves to
# the copy torch has already loaded.
CFLAGS = ('-O3', '-fopenmp')
LDFLAGS = ('-fopenmp', )


def cache_dir() -> str:
    """Where the build for this torch, Python and source lives."""
    root = os.environ.get('MMDOCONV_EXT_CACHE') or osp.join(
        os.environ.get('XDG_CACHE_HOME') or osp.expanduser('~/.cache'),
        'mmdoconv', 'ext')
    with open(SOURCE, 'rb') as f:
        digest = hashlib.sha256(f.read() + repr(CFLAGS).encode()).hexdigest()
    torch_key = torch.__version__.replace('+', '_')
    python_key = 'py%d%d' % sys.version_info[:2]
    return osp.join(root, f'torch-{torch_key}-{python_key}-{digest[:12]}')


def library_path() -> str:
    """The shared library a build writes."""
    return osp.join(cache_dir(), EXTENSION_NAME + '.so')


def build_extension(verbose: bool = False) -> str:
    """Compile the extension into :func:`cache_dir` (no-op when cached).

    Returns:
        The path of the built shared library.

    Raises:
        FileNotFoundError: If the C++ source is not installed.
    """
    from torch.utils.cpp_extension import load
    if not osp.isfile(SOURCE):
        raise FileNotFoundError(f'the C++ source {SOURCE} is not installed '
                                '(reinstall mmdoconv from its wheel or sdist)')
    path = library_path()
    if osp.exists(path):
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    load(EXTENSION_NAME, [SOURCE], extra_cflags=list(CFLAGS),
         extra_ldflags=list(LDFLAGS), build_directory=cache_dir(),
         verbose=verbose)
    return path


_loaded: Optional[Tuple[Optional[ModuleType], str]] = None


def load_extension() -> Tuple[Optional[ModuleType], str]:
    """Load the cached build, once per process.

    Returns:
        ``(module, '')`` or ``(None, why)``.
    """
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


def _load() -> Tuple[Optional[ModuleType], str]:
    # Every reason not to load is a reason to compose with pure PyTorch
    # (said once in the log by the caller), never an error in the user's step.
    try:
        path = library_path()
    except OSError as error:  # the source (the cache key) is not readable
        return None, f'the C++ source is not available: {error}'
    if not osp.exists(path):
        return None, ('the C++ extension is not built for torch '
                      f'{torch.__version__} (python -m mmdoconv.ops.build)')
    if EXTENSION_NAME in sys.modules:
        return sys.modules[EXTENSION_NAME], ''
    try:
        loader = importlib.machinery.ExtensionFileLoader(EXTENSION_NAME, path)
        spec = importlib.util.spec_from_file_location(
            EXTENSION_NAME, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except (ImportError, OSError) as error:
        return None, f'the C++ extension at {path} does not load: {error}'
    sys.modules[EXTENSION_NAME] = module
    return module, ''
