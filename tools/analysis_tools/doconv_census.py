"""Census of the DO-Conv switch over OpenMMLab model zoos.

    python tools/analysis_tools/doconv_census.py 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py' \\
        'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py' --out census.json
    python tools/analysis_tools/doconv_census.py @workshop/census_zoo.txt \
        --out census.json --markdown census.md     # the census page's table (docs/en/user_guides/census.md)
    python tools/analysis_tools/doconv_census.py @workshop/census_zoo_pose.txt   # mmpose 1.3, top-down and bottom-up

For each config (OpenMMLab scope globs or local globs), with no pretrained
weights: converts the model as ``runner_type='DOConvRunner'`` does, counts the
convs converted (of every kind: 2-D, 1-D, 3-D, transposed) and left plain,
trains one step on a synthetic batch with random D, folds, compares outputs,
and loads the folded weights strictly into the plain model.  Prints a
markdown table, a summary line and a per-zoo summary; writes JSON.
Exits 1 when a config fails.
"""
import argparse
import json
import os.path as osp
import sys
import warnings

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)  # the workshop lives beside tools/

from mmdoconv.utils.cli import (BadInputError, cli_main,  # noqa: E402
                                require_new_output)
from workshop.census import (as_json, census_of, markdown_table,  # noqa: E402
                             resolve_configs, short_name)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], fromfile_prefix_chars='@')
    parser.add_argument('configs', nargs='+',
                        help="config globs, e.g. 'mmdet::retinanet/*.py' "
                        "(scopes mmdet, mmseg, mmpretrain, mmpose); "
                        '@FILE reads them from FILE, one per line')
    parser.add_argument('--out', help='JSON file to write')
    parser.add_argument('--markdown', help='markdown file to write the table to')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out / --markdown if they exist')
    parser.add_argument('--D-mul', dest='D_mul',
                        help="the switch's D_mul (an int or a rule name)")
    parser.add_argument('--D-init', dest='D_init', default='identity',
                        choices=['identity', 'random'],
                        help="the switch's D_init")
    parser.add_argument('--max-d-params', dest='max_d_params', type=int,
                        help="the switch's max_d_params (default: the "
                        "model's own parameter count or 2**24)")
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


@cli_main
def main() -> None:
    args = parse_args()
    if args.max_d_params is not None and args.max_d_params < 0:
        raise BadInputError(f'--max-d-params must be an int >= 0, but got '
                            f'{args.max_d_params}')
    for path in (args.out, args.markdown):
        if path:
            require_new_output(path, args.overwrite)
    configs = resolve_configs(args.configs)
    switch = dict(D_init=args.D_init)
    if args.max_d_params is not None:
        switch['max_d_params'] = args.max_d_params
    if args.D_mul is not None:
        switch['D_mul'] = int(args.D_mul) if args.D_mul.isdigit() \
            else args.D_mul
    rows = []
    for index, config in enumerate(configs, start=1):
        name = short_name(config)
        print(f'[census {index}/{len(configs)}] {name} ...', file=sys.stderr,
              flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            row = census_of(config, seed=args.seed, **switch)
        status = 'ok' if row.ok else 'FAILED: ' + '; '.join(row.problems)
        print(f'[census {index}/{len(configs)}] {name}: converted '
              f'{row.converted}, {status} ({row.seconds:.1f}s)',
              file=sys.stderr, flush=True)
        rows.append(row)
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as file:
            file.write(table + '\n')
    if args.out:
        with open(args.out, 'w') as file:
            json.dump(as_json(rows), file, indent=2)
    if not all(row.ok for row in rows):
        sys.exit(1)


if __name__ == '__main__':
    main()
