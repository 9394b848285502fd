import os
import sys

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
