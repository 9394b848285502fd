"""A shortened `make demo` (tools/misc/demo.py --quick) and every artifact it writes."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from runs import ROOT, run_tool


def _assert_png_has_content(path):
    image = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32)
    assert image.shape[0] > 100 and image.shape[1] > 100
    # Not blank: a plot has lines/colours, not one flat colour.
    assert image.std() > 5, path
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20, path


def test_quick_demo_writes_every_artifact(tmp_path):
    work_dir, data_dir = tmp_path / 'demo', tmp_path / 'data'
    result = run_tool('tools/misc/demo.py', '--quick', '--work-dir', str(work_dir),
                      '--data-dir', str(data_dir), timeout=900)
    out = result.stdout
    phases = re.findall(r'^\[demo +[\d.]+s\] (\d)/6', out, flags=re.M)
    assert set(phases) == {'1', '2', '3', '4', '5', '6'}
    assert 'ResNet-18 instead of ResNet-50' in out  # says what was reduced
    assert 'Epoch(train)' in out or 'Iter(train)' in out  # mmengine's log
    table = [line for line in out.splitlines() if line.startswith('| ')]
    assert len(table) == 1 + 4  # header + 2 models x (baseline, DO-Conv)
    assert sum('DO-Conv (task)' in line for line in table) == 2

    rows = json.loads((work_dir / 'results.json').read_text())
    assert [r['model'] for r in rows] == ['Faster R-CNN', 'DeepLabv3']
    for row in rows:
        assert row['metric_unfolded'] is not None
        assert row['metric_folded'] == row['metric_unfolded']
        # Raw outputs, not only metrics: the fold hook's probe compares the
        # mode='tensor' outputs of the unfolded and folded model.
        assert row['fold_max_abs_diff'] is not None
        assert row['fold_max_abs_diff'] <= 1e-5
        assert row['onnx_max_diff'] < 1e-3
        # DO-Conv adds D at train time; the deployed model is the baseline.
        assert row['train_params'] > row['deployed_params']
        assert row['deployed_params'] == row['baseline_params']
        assert row['baseline_step_s'] > 0 and row['doconv_step_s'] > 0
    for name in ('faster_rcnn', 'deeplabv3'):
        for kind in ('loss_curves', 'kernel_maps'):
            _assert_png_has_content(work_dir / f'{name}_{kind}.png')
        assert (work_dir / name / 'doconv' / f'{name}_folded.onnx').is_file()


def _children(pid):
    """Pids whose parent is ``pid`` (from /proc; Linux)."""
    found = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            fields = open(stat).read().rsplit(')', 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split('/')[2]))
    return found


def _descendants(pid):
    """Pids of the children of ``pid``, their children, and so on."""
    found, frontier = [], [pid]
    while frontier:
        children = [c for p in frontier for c in _children(p)]
        found += children
        frontier = children
    return found


def _alive(pid):
    try:
        state = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state != 'Z'


def test_stopping_the_demo_stops_the_tool_it_started(tmp_path):
    """SIGTERM to the demo used to leave its training running.  The demo
    forks its tools from a tool server (its child), so a running tool is a
    grandchild; every descendant must stop."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    demo = subprocess.Popen(
        [sys.executable, 'tools/misc/demo.py', '--quick', '--work-dir',
         str(tmp_path / 'demo'), '--data-dir', str(tmp_path / 'data')],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        descendants = []
        while len(descendants) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            descendants = _descendants(demo.pid)
        assert len(descendants) >= 2, 'the demo started no tool'
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)
        assert demo.returncode != 0
        deadline = time.monotonic() + 30
        while any(map(_alive, descendants)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_alive, descendants)), 'the tool kept running'
    finally:
        if demo.poll() is None:
            demo.kill()


def test_make_demo_runs_the_demo_tool():
    """`make demo` (the README's first command) runs the demo script: the
    command make would run, with --help, prints the demo's usage."""
    import shlex
    from runs import run_python
    dry_run = subprocess.run(['make', '-n', 'demo', 'DEMO_ARGS=--help'],
                             cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    command = shlex.split([line for line in dry_run.splitlines()
                           if 'demo' in line and '--help' in line][-1])
    assert command[0] == '.venv/bin/python' and command[-1] == '--help'
    script = os.path.join(ROOT, command[1])
    assert os.path.isfile(script), f'make demo runs a missing {command[1]}'
    result = run_python(*command[1:])
    assert 'usage: demo.py' in result.stdout and '--quick' in result.stdout
