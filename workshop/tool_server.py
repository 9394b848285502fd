"""Run the project's and OpenMMLab's tools in forked children of one warm
Python process.

Starting a tool costs 8-10 s of imports on a 2-core machine (torch,
mmengine, mmcv and the model zoos of mmdet, mmseg and mmpretrain): more than
most of the small runs the tests and the demo do.  A :class:`ToolServer`
imports those libraries once in a server process that runs no torch op, and
forks one child per tool run.  The child is a new process (its own threads,
RNG, registries' later additions, loggers, exit status) that starts with the
imports done, then runs the script as ``__main__`` with the requested argv,
working directory and environment, as ``python script.py ...`` would.

What a child cannot change is what the server's libraries read when they
were imported; requests whose environment differs in such a variable
(:data:`READ_AT_IMPORT`) are refused so the caller runs a real interpreter.
The server never imports mmdoconv: tools that must work without the plugin
(upstream tools on plain configs) see only what a fresh interpreter sees.

Linux only (``os.fork``).  Protocol: one JSON request per line on the
server's stdin, one JSON reply per line on a private pipe.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

#: Libraries the server imports once (the OpenMMLab model zoos register
#: their modules on import; importing them is most of a tool's start-up).
PRELOAD = ('torch', 'torchvision', 'mmengine.runner', 'mmcv.ops',
           'mmdet.models', 'mmdet.evaluation', 'mmseg.models',
           'mmseg.evaluation', 'mmpretrain.models', 'mmpretrain.evaluation')

#: Environment variables that libraries read when they are imported (thread
#: pools, devices): a request that sets them differently needs a fresh
#: interpreter.
READ_AT_IMPORT = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS',
                  'CUDA_VISIBLE_DEVICES', 'PYTHONHASHSEED', 'TORCH_HOME',
                  'LD_PRELOAD', 'TRITON_INTERPRET')


class ToolServer:
    """A warm Python process that runs tool scripts in forked children.

    Args:
        cwd: Working directory of the server (and default of the children).
        env: Environment of the server; ``PYTHONPATH`` entries are on every
            child's ``sys.path``.

    Example:
        >>> with ToolServer(cwd=root, env=env) as server:
        ...     result = server.run(['tools/train.py', config], cwd=root,
        ...                         env=env, stdout=log, stderr=log)
    """

    def __init__(self, cwd: str, env: Dict[str, str]) -> None:
        self.env = dict(env)
        read_fd, write_fd = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, '-m', 'workshop.tool_server', str(write_fd)],
            cwd=cwd, env=self.env, stdin=subprocess.PIPE,
            pass_fds=(write_fd, ), text=True)
        os.close(write_fd)
        self._replies = read_fd
        # Bytes read past the last full reply: the pid and the exit status
        # of a short-lived child can arrive in one read.
        self._pending = b''
        self.child_pid: Optional[int] = None
        # The server imports while the caller goes on; start() waits.
        self._ready = False

    def accepts(self, env: Dict[str, str]) -> bool:
        """Whether a child can run with ``env`` (see :data:`READ_AT_IMPORT`)."""
        return all(env.get(name) == self.env.get(name)
                   for name in READ_AT_IMPORT)

    def start(self, argv: Sequence[str], cwd: str, env: Dict[str, str],
              stdout: str, stderr: str) -> int:
        """Fork a child that runs ``python argv...``; returns its pid.

        Args:
            argv: A script path and its arguments.
            cwd: The child's working directory.
            env: The child's environment.
            stdout: File (or FIFO) the child's stdout goes to.
            stderr: File (or FIFO) the child's stderr goes to; may be
                ``stdout``.
        """
        if self.child_pid is not None:
            raise RuntimeError('the tool server runs one child at a time')
        if not self._ready:
            ready = self._reply()
            if ready.get('ready') is not True:
                raise RuntimeError(f'the tool server did not start: {ready}')
            self._ready = True
        if not self.accepts(env):
            raise ValueError('env sets a variable read at import time ('
                             f'{", ".join(READ_AT_IMPORT)}) differently from '
                             'the server: run a fresh interpreter')
        request = dict(argv=list(argv), cwd=cwd, env=env, stdout=stdout,
                       stderr=stderr)
        self._process.stdin.write(json.dumps(request) + '\n')
        self._process.stdin.flush()
        self.child_pid = self._reply()['pid']
        return self.child_pid

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the child; its exit status (negative: killed by that
        signal).  After ``timeout`` seconds the child is killed and
        :class:`subprocess.TimeoutExpired` raised."""
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            return self._reply(deadline)['returncode']
        except subprocess.TimeoutExpired:
            self.kill_child()
            self._reply()
            raise subprocess.TimeoutExpired('tool server child', timeout)
        finally:
            self.child_pid = None

    def run(self, argv: Sequence[str], cwd: str, env: Dict[str, str],
            stdout: str, stderr: str,
            timeout: Optional[float] = None) -> int:
        """:meth:`start` a child and :meth:`wait` for it."""
        self.start(argv, cwd, env, stdout, stderr)
        return self.wait(timeout)

    def kill_child(self) -> None:
        """Kill the running child, if any (its reply still follows)."""
        if self.child_pid is not None:
            try:
                os.kill(self.child_pid, 9)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop the running child, if any, and the server."""
        self.kill_child()
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._replies is not None:
            os.close(self._replies)
            self._replies = None

    def __enter__(self) -> 'ToolServer':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _reply(self, deadline: Optional[float] = None) -> dict:
        import select
        while b'\n' not in self._pending:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise subprocess.TimeoutExpired('tool server', 0)
            ready, _, _ = select.select([self._replies], [], [], wait)
            if ready:
                data = os.read(self._replies, 65536)
                if not data:
                    raise RuntimeError('the tool server stopped (exit status '
                                       f'{self._process.wait()})')
                self._pending += data
        line, self._pending = self._pending.split(b'\n', 1)
        return json.loads(line)


def _run_child(request: dict) -> None:
    """In the forked child: become ``python script args...`` and exit."""
    import atexit
    import runpy
    import traceback
    os.setpgid(0, 0)  # its own group: killing it leaves the server alone
    stdout = os.open(request['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
    stderr = stdout if request['stderr'] == request['stdout'] else os.open(
        request['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    # The server's stdin carries the requests: not the tool's to read.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    script, *args = request['argv']
    path = [p for p in request['env'].get('PYTHONPATH', '').split(os.pathsep)
            if p]
    sys.path[:] = [osp.dirname(osp.abspath(script))] + path + [
        p for p in sys.path[1:] if p not in path]
    sys.argv = [script, *args]
    status = 0
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
            status = 1
    except BaseException:  # what the interpreter prints for an uncaught one
        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _serve(reply_fd: int) -> None:
    """The server's loop: preload, then fork a child per request."""
    import importlib
    replies = os.fdopen(reply_fd, 'w')
    # Stray prints of the preloaded libraries must not reach the reply pipe.
    os.dup2(2, 1)
    for module in PRELOAD:
        importlib.import_module(module)
    replies.write(json.dumps(dict(ready=True)) + '\n')
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            _run_child(request)
        replies.write(json.dumps(dict(pid=pid)) + '\n')
        replies.flush()
        _, status = os.waitpid(pid, 0)
        returncode = (os.WEXITSTATUS(status) if os.WIFEXITED(status) else
                      -os.WTERMSIG(status))
        replies.write(json.dumps(dict(returncode=returncode)) + '\n')
        replies.flush()


def python_argv(argv: List[str]) -> bool:
    """Whether ``python argv...`` runs a script a :class:`ToolServer` can
    run (not ``-c``, ``-m`` or an interpreter option)."""
    return bool(argv) and not argv[0].startswith('-') and argv[0].endswith(
        '.py')


if __name__ == '__main__':
    _serve(int(sys.argv[1]))
