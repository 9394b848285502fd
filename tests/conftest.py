import os
import sys

# Tests import helpers (tests/reference.py) by module name, and the workshop
# (synthetic data, recipes) from the repository root.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402

# `make test` runs the suite on two pytest-xdist workers (the machine's two
# cores). Each worker, and every tool it starts, then gets its share of the
# cores: two processes with two OpenMP threads each on two cores spin-wait
# for each other.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    import torch  # noqa: E402
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

# The longest tests (minutes: whole training runs through the tools) go to
# the workers first, so no worker is left with one of them at the end.
_SLOW_FIRST = ('test_demo.py', 'test_segmentation.py', 'test_detection.py',
               'test_census.py', 'test_deploy.py', 'test_imagenet_table.py',
               'test_backbone_stage.py')


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(
            _SLOW_FIRST)
    items.sort(key=rank)  # stable: the order inside a file is kept


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
