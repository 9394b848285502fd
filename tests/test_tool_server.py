"""The warm tool server the tests and the demo run tools from: a child must
behave as ``python script.py ...`` in a fresh interpreter would."""
import json
import os
import subprocess
import time

import pytest

from runs import ROOT, run_python, tool_env, tool_server

SCRIPT = """
import json, os, sys
print(json.dumps(dict(argv=sys.argv, cwd=os.getcwd(), path0=sys.path[0],
                      marker=os.environ.get('TOOL_SERVER_MARKER'),
                      name=__name__,
                      mmdoconv=[m for m in sys.modules
                               if m.split('.')[0] == 'mmdoconv'])))
print('to stderr', file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_child_runs_the_script_as_main(tmp_path):
    script = tmp_path / 'probe.py'
    script.write_text(SCRIPT)
    result = run_python(str(script), '3', 'x y',
                        env=tool_env(TOOL_SERVER_MARKER='set'), check=False)
    assert result.returncode == 3
    assert result.stderr == 'to stderr\n'
    seen = json.loads(result.stdout)
    assert seen['argv'] == [str(script), '3', 'x y']
    assert seen['cwd'] == ROOT and seen['path0'] == str(tmp_path)
    assert seen['name'] == '__main__' and seen['marker'] == 'set'
    # Nothing of the plugin is loaded before the tool imports it.
    assert seen['mmdoconv'] == []
    # The next child does not inherit the first one's environment.
    again = json.loads(run_python(str(script), '0').stdout)
    assert again['marker'] is None


def test_uncaught_exception_and_signal_exit_statuses(tmp_path):
    script = tmp_path / 'fails.py'
    script.write_text('raise KeyError("boom")\n')
    result = run_python(str(script), check=False)
    assert result.returncode == 1
    assert "KeyError: 'boom'" in result.stderr
    script.write_text('import os, signal\nos.kill(os.getpid(), '
                      'signal.SIGKILL)\n')
    assert run_python(str(script), check=False).returncode == -9


def test_timeout_kills_the_child(tmp_path):
    script = tmp_path / 'sleeps.py'
    script.write_text('import time\ntime.sleep(60)\n')
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(str(script), timeout=1)
    # The server goes on serving.
    script.write_text('print("ok")\n')
    assert run_python(str(script)).stdout == 'ok\n'


def test_variables_read_at_import_need_a_fresh_interpreter(tmp_path):
    server = tool_server()
    # A value the server was not started with (under `make test` it has 1).
    threads = '2' if os.environ.get('OMP_NUM_THREADS') == '1' else '1'
    env = tool_env(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    assert not server.accepts(env)
    with pytest.raises(ValueError, match='OMP_NUM_THREADS'):
        server.run([os.path.join(ROOT, 'tools', 'train.py')], cwd=ROOT,
                   env=env, stdout=str(tmp_path / 'o'),
                   stderr=str(tmp_path / 'o'))
    # run_python takes the fresh interpreter instead.
    script = tmp_path / 'threads.py'
    script.write_text('import torch\nprint(torch.get_num_threads())\n')
    assert run_python(str(script), env=env).stdout == threads + '\n'


def test_two_replies_in_one_read_are_both_seen():
    """A child that exits at once: its pid and exit status can reach the
    caller in one read; the second reply must not wait for more data."""
    from workshop.tool_server import ToolServer
    server = ToolServer.__new__(ToolServer)
    read_fd, write_fd = os.pipe()
    server._replies, server._pending = read_fd, b''
    os.write(write_fd, (json.dumps(dict(pid=1)) + '\n' +
                        json.dumps(dict(returncode=3)) + '\n').encode())
    try:
        deadline = time.monotonic() + 5
        assert server._reply(deadline) == dict(pid=1)
        assert server._reply(deadline) == dict(returncode=3)
    finally:
        os.close(read_fd)
        os.close(write_fd)
