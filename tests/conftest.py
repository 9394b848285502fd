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
