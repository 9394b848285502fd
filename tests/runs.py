"""Helpers to run the project's configs and tools small and fast in tests."""
import atexit
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
from typing import Dict, Optional

from workshop.recipes import (as_cli, classification_options,  # noqa: F401
                              segmentation_options)
from workshop.recipes import detection_options as _detection_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.dirname(osp.abspath(__file__))


def detection_options(coco_root: str, **kwargs) -> Dict:
    """The small-run recipe with light RPN / RoI heads: the tests check
    DO-Conv layers, folding and tools, not the RoI stage's capacity."""
    return _detection_options(coco_root, light_heads=True, **kwargs)


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


def tool_env(**extra: str) -> Dict[str, str]:
    """The environment tools run with: the repository and tests/ importable."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
                **extra)


_server = None


def tool_server():
    """The session's :class:`~workshop.tool_server.ToolServer`, started on
    first use: each tool run forks from it with torch and the OpenMMLab
    model zoos already imported, instead of paying 8-10 s of imports."""
    global _server
    if _server is None:
        from workshop.tool_server import ToolServer
        _server = ToolServer(cwd=ROOT, env=tool_env())
        atexit.register(_server.close)
    return _server


def run_python(*args: str, env: Optional[Dict] = None, timeout: int = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """``python args...`` from the repository root, stdout and stderr
    captured; a script runs in a child of :func:`tool_server`, anything else
    (``-c``, changed thread variables) in a fresh interpreter."""
    from workshop.tool_server import python_argv
    env = tool_env() if env is None else env
    server = tool_server() if python_argv(list(args)) else None
    if server is None or not server.accepts(env):
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True,
                              timeout=timeout, check=check)
    with tempfile.TemporaryDirectory() as folder:
        out, err = osp.join(folder, 'stdout'), osp.join(folder, 'stderr')
        returncode = server.run(args, cwd=ROOT, env=env, stdout=out,
                                stderr=err, timeout=timeout)
        result = subprocess.CompletedProcess(
            [sys.executable, *args], returncode,
            open(out, errors='replace').read(),
            open(err, errors='replace').read())
    if check:
        result.check_returncode()
    return result


def run_tool(*args: str, env_extra: Dict = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python tools/...`` (or a shell script) from the repository root;
    a failure raises with the end of the tool's output."""
    env = tool_env(**(env_extra or {}))
    if args[0].endswith('.sh'):
        result = subprocess.run(list(args), cwd=ROOT, env=env,
                                capture_output=True, text=True,
                                timeout=timeout)
    else:
        result = run_python(*args, env=env, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(f'{" ".join(args[:2])} failed:\n'
                             f'{result.stdout[-3000:]}\n{result.stderr[-5000:]}')
    return result


def logged_metrics(text: str, prefix: str) -> Dict[str, float]:
    """The last ``prefix/name: value`` metrics an mmengine log printed."""
    return {name: float(value) for name, value in re.findall(
        rf'({re.escape(prefix)}/\w+): (-?[\d.]+)', text)}
