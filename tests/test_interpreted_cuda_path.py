"""The CUDA code path, run on CPU tensors by Triton's interpreter.

``MMDOCONV_COMPOSE=triton`` with ``TRITON_INTERPRET=1`` makes the layer
choose the Triton kernels for CPU tensors, so the same dispatch, self-check
(first reached under ``no_grad``), recomposing backward, eval cache, fold and
fold hook run as on a GPU.  The result must equal the C++ path's to float32
round-off.  (Before this test the self-check raised under ``no_grad``, and
nothing in the suite took the layer's Triton path.)
"""
import os.path as osp

import pytest
import torch

from runs import ROOT, run_python, tool_env

SCRIPT = osp.join(ROOT, 'tests', 'compose_path_run.py')


@pytest.fixture(scope='module')
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp('paths')
    results = {}
    for name, env in (('triton', dict(MMDOCONV_COMPOSE='triton',
                                      TRITON_INTERPRET='1')),
                      ('cpp', dict(MMDOCONV_COMPOSE='auto'))):
        out = folder / f'{name}.pt'
        result = run_python(SCRIPT, str(folder / name), str(out),
                            env=tool_env(**env), timeout=300, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + \
            result.stderr[-3000:]
        results[name] = (torch.load(out, weights_only=False),
                         result.stdout + result.stderr)
    return results


def test_the_layer_takes_the_triton_kernels_and_logs_it(records):
    record, log = records['triton']
    assert record['backend'] == 'triton'
    assert 'DO-Conv composition on cpu: fused (triton)' in log
    assert 'pure PyTorch' not in log
    assert records['cpp'][0]['backend'] == 'cpp'


def test_triton_path_equals_the_cpp_path(records):
    triton, cpp = records['triton'][0], records['cpp'][0]
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(triton['first_eval'], cpp['first_eval'], **tol)
    torch.testing.assert_close(triton['loss'], cpp['loss'], **tol)
    assert triton['grads'].keys() == cpp['grads'].keys()
    for name, grad in cpp['grads'].items():
        torch.testing.assert_close(triton['grads'][name], grad, **tol)
        if name.endswith('.D'):
            assert grad.abs().sum() > 0, name
    for key, value in cpp['state'].items():
        torch.testing.assert_close(triton['state'][key], value, **tol)
    assert triton['val'] == cpp['val'] and triton['test'] == cpp['test']
    for key in ('unfolded', 'cached', 'folded'):
        torch.testing.assert_close(triton[key], cpp[key], **tol)


def test_folded_equals_unfolded_on_each_path(records):
    for name in ('triton', 'cpp'):
        record = records[name][0]
        assert torch.equal(record['cached'], record['unfolded'])
        torch.testing.assert_close(record['folded'], record['unfolded'],
                                   rtol=1e-5, atol=1e-6)
