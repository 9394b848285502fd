"""What mmengine checkpoints may hold besides tensors, rebuilt without trust.

torch >= 2.6 unpickles checkpoints with ``weights_only=True``: tensors,
containers and the globals a caller allowlists.  mmengine 0.10.7's checkpoints
also hold numpy arrays, scalars and dtypes (in ``meta`` and the message hub)
and the message hub's ``HistoryBuffer``.  Allowlisting the real numpy and
mmengine callables is not safe:

- numpy's ``_reconstruct`` + ``ndarray.__setstate__`` accept an object dtype
  whose raw bytes are then read as object pointers (a crafted file crashes
  the interpreter);
- ``HistoryBuffer.__setstate__`` updates the class-wide
  ``_statistics_methods`` dict, so a crafted file changes how every later
  HistoryBuffer behaves.

So the pickle's names for those globals are bound to the stand-ins below
(torch's ``(callable, 'module.name')`` allowlist form).  They accept exactly
the shapes of data mmengine writes: plain numeric dtypes in native layout,
arrays whose raw bytes match their shape, HistoryBuffers with mmengine's own
four statistics methods.  Anything else raises
:class:`pickle.UnpicklingError` before any numpy or mmengine object is made.
Arrays and HistoryBuffers come out of the unpickler as placeholders and
:func:`materialize` turns them into the real objects, built the way numpy and
mmengine build them (``np.frombuffer``, ``HistoryBuffer(...)``).
"""
import math
import pickle
from typing import Any, Dict, List, Tuple

import numpy as np

#: numpy dtype codes that checkpoints may hold: booleans, integers, floats.
_PLAIN_DTYPE_KINDS = 'biuf'
_HISTORY_STATISTICS = ('min', 'max', 'current', 'mean')
_HISTORY_STATE_KEYS = {'max_length', '_log_history', '_count_history',
                       'statistics_methods'}


def _refuse(message: str) -> None:
    raise pickle.UnpicklingError(f'refusing {message}')


class _NDArrayType:
    """Stands for ``numpy.ndarray`` as the first argument of _reconstruct."""


class _HistoryBufferMethod:
    """What ``getattr(HistoryBuffer, name)`` unpickles to: only a name."""
    __slots__ = ('name', )

    def __init__(self, name: str) -> None:
        self.name = name


class _DTypeBuilder:
    """A plain numeric numpy dtype, checked before numpy sees it."""
    __slots__ = ('dtype', )

    def __init__(self, code: Any = None, align: Any = False,
                 copy: Any = True) -> None:
        if not isinstance(code, str) or len(code) > 4:
            _refuse(f'numpy dtype {code!r}: only plain numeric dtypes '
                    'are allowed')
        try:
            dtype = np.dtype(code)
        except TypeError:
            _refuse(f'numpy dtype {code!r}: not a dtype code')
        if dtype.kind not in _PLAIN_DTYPE_KINDS or dtype.fields is not None \
                or dtype.subdtype is not None or dtype.hasobject:
            _refuse(f'numpy dtype {code!r} (kind {dtype.kind!r}): only '
                    'bool, int, uint and float dtypes are allowed')
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, byteorder, None, None, None, -1, -1, flags) for
        # plain dtypes; fields, sub-arrays or sizes would change what it is.
        if not (isinstance(state, tuple) and len(state) == 8
                and state[0] == 3 and state[1] in ('<', '>', '|', '=')
                and state[2:5] == (None, None, None)
                and state[5:7] == (-1, -1) and isinstance(state[7], int)):
            _refuse(f'numpy dtype state {state!r}: not a plain dtype')
        if state[1] in '<>':
            self.dtype = self.dtype.newbyteorder(state[1])


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _DTypeBuilder):
        _refuse(f'numpy dtype {value!r}: not a checked dtype')
    return value.dtype


class _ArrayBuilder:
    """A numpy array rebuilt from its raw bytes, checked against its shape."""
    __slots__ = ('array', )

    def __init__(self) -> None:
        self.array = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5
                and state[0] == 1):
            _refuse('numpy array state: not (1, shape, dtype, fortran, '
                    'bytes)')
        _, shape, dtype, fortran, raw = state
        dtype = _as_dtype(dtype)
        if not (isinstance(shape, tuple) and all(
                type(n) is int and n >= 0 for n in shape)):
            _refuse(f'numpy array shape {shape!r}')
        if not isinstance(fortran, bool) or not isinstance(raw, bytes):
            _refuse('numpy array state: malformed layout flag or data')
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            _refuse(f'numpy array of shape {shape} and dtype {dtype}: '
                    f'{len(raw)} bytes of data, expected '
                    f'{count * dtype.itemsize}')
        self.array = np.frombuffer(raw, dtype=dtype).reshape(
            shape, order='F' if fortran else 'C').copy()


class _HistoryBufferBuilder:
    """mmengine's HistoryBuffer, built by its constructor from checked data."""
    __slots__ = ('state', )

    def __init__(self) -> None:
        self.state = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, dict) and set(state) <= _HISTORY_STATE_KEYS
                and {'max_length', '_log_history', '_count_history'}
                <= set(state)):
            keys = sorted(state) if isinstance(state, dict) else state
            _refuse(f'HistoryBuffer state {keys!r}: expected the keys '
                    f'{sorted(_HISTORY_STATE_KEYS)}')
        methods = state.get('statistics_methods', {})
        # Only mmengine's own four, each under its own name: anything else
        # would be written into the class-wide _statistics_methods.
        if not (isinstance(methods, dict) and all(
                isinstance(method, _HistoryBufferMethod)
                and method.name == name for name, method in methods.items())):
            _refuse('HistoryBuffer statistics methods other than mmengine\'s '
                    f'{_HISTORY_STATISTICS}')
        if type(state['max_length']) is not int or state['max_length'] < 1:
            _refuse(f'HistoryBuffer max_length {state["max_length"]!r}')
        for key in ('_log_history', '_count_history'):
            value = state[key]
            if not (isinstance(value, _ArrayBuilder)
                    and value.array.ndim == 1):
                _refuse(f'HistoryBuffer {key}: expected a 1-D numeric array')
        if len(state['_log_history'].array) != len(
                state['_count_history'].array):
            _refuse('HistoryBuffer histories of different lengths')
        self.state = state

    def build(self) -> Any:
        from mmengine.logging import HistoryBuffer
        buffer = HistoryBuffer(max_length=self.state['max_length'])
        # The constructor's np.array(list) would turn an int64 history into
        # float or object arrays; the checked arrays keep their dtype.
        buffer._log_history = self.state['_log_history'].array
        buffer._count_history = self.state['_count_history'].array
        return buffer


def _reconstruct_array(subtype: Any, shape: Any, typecode: Any) -> Any:
    """Stand-in for ``numpy.core.multiarray._reconstruct``."""
    if subtype is not _NDArrayType or shape != (0, ) or typecode != b'b':
        _refuse(f'numpy _reconstruct({subtype!r}, {shape!r}, '
                f'{typecode!r}): only plain ndarrays are allowed')
    return _ArrayBuilder()


def _reconstruct_scalar(dtype: Any, raw: Any = None) -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar``."""
    dtype = _as_dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        _refuse(f'numpy {dtype} scalar data {raw!r}')
    return np.frombuffer(raw, dtype=dtype)[0]


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: protocol 2 writes ``b''`` as ``bytes()``
    (the data of an empty array)."""
    if args:
        _refuse(f'bytes{args!r}: only bytes() is allowed')
    return b''


def _history_buffer_getattr(owner: Any, name: Any) -> _HistoryBufferMethod:
    """Stand-in for the one ``getattr`` mmengine checkpoints hold:
    ``getattr(HistoryBuffer, 'min')`` and its three siblings."""
    if owner is not _HistoryBufferBuilder or name not in _HISTORY_STATISTICS:
        _refuse(f'getattr({owner!r}, {name!r}): only HistoryBuffer '
                'statistics methods are allowed')
    return _HistoryBufferMethod(name)


def safe_globals() -> List[Tuple[Any, str]]:
    """``(stand-in, pickled name)`` pairs for ``torch.serialization.safe_globals``.

    Every name numpy 1.x and 2.x and mmengine 0.10 write into checkpoints is
    bound to a stand-in of this module, never to numpy or mmengine itself.
    """
    pairs = [
        (_NDArrayType, 'numpy.ndarray'),
        (_DTypeBuilder, 'numpy.dtype'),
        (_HistoryBufferBuilder,
         'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_getattr, '__builtin__.getattr'),  # protocol 2
        (_history_buffer_getattr, 'builtins.getattr'),
        (_empty_bytes, '__builtin__.bytes'),
        (_empty_bytes, 'builtins.bytes'),
        # BUILD on the placeholders needs their own types allowlisted.
        (_ArrayBuilder, f'{__name__}._ArrayBuilder'),
    ]
    for core in ('numpy.core', 'numpy._core'):
        pairs += [(_reconstruct_array, f'{core}.multiarray._reconstruct'),
                  (_reconstruct_scalar, f'{core}.multiarray.scalar')]
    return pairs


def materialize(obj: Any) -> Any:
    """Replace the placeholders in an unpickled checkpoint by real objects.

    Containers are updated in place (an ``OrderedDict`` keeps its
    ``_metadata``); tuples are rebuilt.  Objects shared in the pickle stay
    shared.
    """
    done: Dict[int, Any] = {}

    def visit(node: Any) -> Any:
        key = id(node)
        if key in done:
            return done[key]
        if isinstance(node, _ArrayBuilder):
            result = node.array
        elif isinstance(node, _DTypeBuilder):
            result = node.dtype
        elif isinstance(node, _HistoryBufferBuilder):
            result = node.build()
        elif isinstance(node, _HistoryBufferMethod):
            _refuse('a HistoryBuffer method outside a HistoryBuffer')
        elif isinstance(node, dict):
            done[key] = node
            for item_key, value in node.items():
                node[item_key] = visit(value)
            return node
        elif isinstance(node, list):
            done[key] = node
            node[:] = [visit(value) for value in node]
            return node
        elif isinstance(node, tuple):
            result = tuple(visit(value) for value in node)
        elif isinstance(node, (set, frozenset)):
            result = type(node)(visit(value) for value in node)
        else:
            return node
        done[key] = result
        return result

    return visit(obj)
