"""Helpers to run the project's configs and tools small and fast in tests."""
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict

from workshop.recipes import (as_cli, classification_options,  # noqa: F401
                              detection_options, segmentation_options)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.dirname(osp.abspath(__file__))


def config_path(*parts: str) -> str:
    return osp.join(ROOT, 'configs', *parts)


def upstream_tool(package: str, tool: str) -> str:
    """Path of an OpenMMLab library's own tool, shipped in its wheel
    (``mmdet/.mim/tools/train.py``)."""
    import importlib
    module = importlib.import_module(package)
    path = osp.join(osp.dirname(module.__file__), '.mim', 'tools', tool)
    assert osp.isfile(path), path
    return path


def run_tool(*args: str, env_extra: Dict = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python tools/...`` (or a shell script) from the repository root."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
               **(env_extra or {}))
    command = list(args) if args[0].endswith('.sh') else [sys.executable,
                                                          *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f'{" ".join(args[:2])} failed:\n'
                             f'{result.stdout[-3000:]}\n{result.stderr[-5000:]}')
    return result


def logged_metrics(text: str, prefix: str) -> Dict[str, float]:
    """The last ``prefix/name: value`` metrics an mmengine log printed."""
    return {name: float(value) for name, value in re.findall(
        rf'({re.escape(prefix)}/\w+): (-?[\d.]+)', text)}
