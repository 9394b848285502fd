"""The paper's CIFAR statistic from mmengine runs: the mean top-1 of the last
five validations (epochs) of each run, averaged over the runs of a config,
with the spread, and the DO-Conv - baseline delta per network.

    python tools/analysis_tools/cifar_summary.py work_dirs/cifar-* [--markdown table.md]

Each WORK_DIR is searched for runs (``<timestamp>/vis_data/scalars.json``
beside the config mmengine dumped, ``<config>.py``); runs of the same config
(say, five seeds in five work dirs) are one row.  A DO-Conv config
(``...-doconv...``) is compared with the baseline of the same name without
``-doconv``.
"""
import argparse
import glob
import json
import os.path as osp
import statistics
from collections import defaultdict
from typing import Dict, List, Optional

from mmdoconv.utils.cli import (BadInputError, cli_main,
                                require_new_output)

METRIC = 'accuracy/top1'
LAST = 5


def run_statistic(scalars_path: str, last: int = LAST) -> Optional[float]:
    """Mean top-1 of a run's last ``last`` validations (None without any)."""
    values = []
    with open(scalars_path) as f:
        for line in f:
            line = line.strip()
            if line:
                record = json.loads(line)
                if METRIC in record:
                    values.append(float(record[METRIC]))
    return statistics.mean(values[-last:]) if values else None


def collect_runs(work_dirs: List[str]) -> Dict[str, List[float]]:
    """``{config name: [statistic of each run]}``."""
    runs: Dict[str, List[float]] = defaultdict(list)
    for work_dir in work_dirs:
        if not osp.isdir(work_dir):
            raise BadInputError(f'work dir {work_dir!r} does not exist')
        found = sorted(glob.glob(osp.join(work_dir, '**', 'vis_data',
                                          'scalars.json'), recursive=True))
        for path in found:
            run_dir = osp.dirname(osp.dirname(osp.dirname(path)))
            configs = sorted(glob.glob(osp.join(run_dir, '*.py')))
            name = osp.splitext(osp.basename(configs[0]))[0] if configs \
                else osp.basename(osp.normpath(run_dir))
            value = run_statistic(path)
            if value is not None:
                runs[name].append(value)
    if not runs:
        raise BadInputError(f'no run with {METRIC!r} validations under '
                            f'{work_dirs}')
    return runs


def _cell(values: Optional[List[float]]) -> str:
    if not values:
        return '-'
    mean = statistics.mean(values)
    spread = f', {min(values):.2f}-{max(values):.2f}' if len(values) > 1 \
        else ''
    return f'{mean:.2f} ({len(values)} run{"s" * (len(values) > 1)}{spread})'


def summary_table(runs: Dict[str, List[float]]) -> str:
    """A markdown table: baseline, DO-Conv and the delta per network."""
    lines = ['| baseline config | baseline top-1 (runs, spread) | DO-Conv '
             'config | DO-Conv top-1 (runs, spread) | DO-Conv - baseline |',
             '|---|---|---|---|---|']
    doconv = {name for name in runs if '-doconv' in name}
    baselines = sorted({_baseline_of(name) for name in runs})
    for base in baselines:
        partners = sorted(n for n in doconv if _baseline_of(n) == base) or [
            None]
        for partner in partners:
            delta = '-'
            if partner and runs.get(base):
                gain = statistics.mean(runs[partner]) - statistics.mean(
                    runs[base])
                delta = f'{gain:+.2f}'
            lines.append(f'| {base if base in runs else base + " (no run)"} '
                         f'| {_cell(runs.get(base))} | {partner or "-"} | '
                         f'{_cell(runs.get(partner))} | {delta} |')
    return '\n'.join(lines)


def _baseline_of(name: str) -> str:
    """``cifar-resnet20-doconv-stage0_1xb128...`` -> ``cifar-resnet20_1xb...``."""
    model, _, rest = name.partition('_')
    return model.split('-doconv')[0] + '_' + rest


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--markdown', help='also write the table here')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --markdown if it exists')
    args = parser.parse_args()
    if args.markdown:
        require_new_output(args.markdown, args.overwrite)
    table = summary_table(collect_runs(args.work_dirs))
    print(f'Mean top-1 of the last {LAST} validations per run, averaged '
          'over runs:\n')
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table + '\n')


if __name__ == '__main__':
    main()
