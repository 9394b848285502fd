"""Build the fused composition's C++ extension into its cache.

    python -m mmdoconv.ops.build [--verbose]

``tools/setup_env.sh`` runs this; a second run finds the cached build and
returns at once.  Without a build, DO-Conv composes with pure PyTorch.
"""
import argparse
import os.path as osp
import time

from .extension import build_extension, library_path, load_extension


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--verbose', action='store_true',
                        help='print the compiler commands')
    args = parser.parse_args()
    cached = osp.exists(library_path())
    start = time.monotonic()
    try:
        path = build_extension(verbose=args.verbose)
    except (OSError, RuntimeError) as error:  # no source, compiler or OpenMP
        raise SystemExit(f'error: the C++ extension did not build: {error} '
                         '(DO-Conv composes with pure PyTorch without it)')
    module, why = load_extension()
    if module is None:
        raise SystemExit(f'error: {why}')
    how = 'cached' if cached else f'built in {time.monotonic() - start:.0f} s'
    print(f'fused DO-Conv composition (C++): {path} ({how})')


if __name__ == '__main__':
    main()
