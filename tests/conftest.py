import os
import sys


def _share_cores_between_workers() -> None:
    """Under pytest-xdist (``make test``), give each worker's torch, and the
    tools it starts, its share of the cores.

    Each torch otherwise starts one OpenMP thread per core, and two workers'
    threads fight over the same cores: the two-worker suite took longer than
    one worker before this (9 min 45 s against about 8.5 min here).  Must run
    before torch is imported; a thread count the user set is kept.
    """
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
        else os.cpu_count() or 1
    threads = str(max(1, cores // workers))
    for variable in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ.setdefault(variable, threads)


_share_cores_between_workers()

# Tests import helpers (tests/reference.py) by module name, and the workshop
# (synthetic data, recipes) from the repository root.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    """The synthetic datasets, written once per test session."""
    from workshop.synthetic import write_datasets
    data_dir = tmp_path_factory.mktemp('data')
    roots = write_datasets(
        ['coco', 'cityscapes', 'voc', 'imagenet'], str(data_dir),
        progress=lambda message: None,
        coco=dict(num_train=8, num_val=4),
        cityscapes=dict(num_train=4, num_val=2, size=(128, 256)),
        voc=dict(num_train=4, num_val=2, num_aug=2, size=(128, 160)),
        imagenet=dict(num_train=12, num_val=6, size=48))
    return roots


@pytest.fixture
def tmp_path(tmp_path_factory):
    """A short fresh directory per test (``<basetemp>/t<N>``) instead of
    pytest's ``<basetemp>/<test name, 30 characters>0``.

    Paths under it end up in configs (``data_root``, ``work_dir``), and
    mmengine formats every config with yapf several times per Runner; past
    yapf's column limit formatting gets slow: DeepLabv3's small-run config
    took 1.42 s per format with the demo test's default path (61 characters
    before ``/data``) against 0.10 s with 34 characters, which made the quick
    demo test 91-95 s instead of about 60 s.
    """
    return tmp_path_factory.mktemp('t', numbered=True)


@pytest.fixture(autouse=True)
def restore_torch_process_state():
    """Undo what a test's Runner sets process-wide.

    mmengine's ``randomness=dict(deterministic=True)`` turns on
    ``torch.use_deterministic_algorithms`` for the rest of the process; with
    it every ``torch.empty`` fills its memory (NaN), which made the in-process
    trainings of later tests up to twice as slow.
    """
    import torch
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope='session', autouse=True)
def format_each_config_text_once():
    """Every mmengine Runner formats its config with yapf four or five times
    (logged, dumped, kept by the visualizer and in the message hub), about
    1 s each for the VOC config on a 2-core CPU: a third of an in-process
    test's time.  yapf's ``FormatCode`` is a pure function of its input, so
    in the test process each distinct text is formatted once; what mmengine
    logs and dumps is unchanged.  (Tools the tests start format as usual.)
    """
    import mmengine.config.config as mmengine_config
    original = mmengine_config.FormatCode
    formatted = {}

    def format_code(text, *args, **kwargs):
        key = (text, repr(args), repr(sorted(kwargs.items())))
        if key not in formatted:
            formatted[key] = original(text, *args, **kwargs)
        return formatted[key]

    mmengine_config.FormatCode = format_code
    yield
    mmengine_config.FormatCode = original


@pytest.fixture(scope='session', autouse=True)
def resolve_each_package_config_once():
    """mmengine resolves every ``_base_ = ['mmdet::...']`` by reading the
    package's whole model index (``.mim/model-index.yml`` and every metafile
    it lists, about 0.11 s for mmdet) and by reloading ``pkg_resources`` to
    ask whether the package is installed; in this process that was about
    36 s of the suite.  The installed packages do not change during a test
    session, so each (package, config) is looked up once; the lookup's result
    (a metafile entry, or the ValueError that sends mmengine to the
    package's ``.mim/configs``) is replayed unchanged.  (Tools the tests start
    resolve as usual.)
    """
    import copy

    import mmengine.config.config as mmengine_config
    import mmengine.config.utils as config_utils
    original_metainfo = config_utils._get_cfg_metainfo
    original_is_installed = mmengine_config.is_installed
    metainfo, installed = {}, {}

    def cfg_metainfo(package_path, cfg_path):
        key = (package_path, cfg_path)
        if key not in metainfo:
            try:
                metainfo[key] = (original_metainfo(package_path, cfg_path),
                                 None)
            except ValueError as error:
                metainfo[key] = (None, str(error))
        entry, message = metainfo[key]
        if message is not None:
            raise ValueError(message)
        return copy.deepcopy(entry)

    def is_installed(package):
        if package not in installed:
            installed[package] = original_is_installed(package)
        return installed[package]

    config_utils._get_cfg_metainfo = cfg_metainfo
    mmengine_config.is_installed = is_installed
    yield
    config_utils._get_cfg_metainfo = original_metainfo
    mmengine_config.is_installed = original_is_installed
