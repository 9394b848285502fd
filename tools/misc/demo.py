"""``make demo``: train, fold, evaluate and export DO-Conv detectors and
segmentors end to end on the bundled synthetic data, and draw the paper's
pictures.

    python tools/misc/demo.py [--work-dir work_dirs/demo] [--data-dir data] [--quick]

Phases: (1) synthetic COCO and Cityscapes sets, (2) train baseline and
doconv-task Faster R-CNN and DeepLabv3 with one seed and schedule, (3)
evaluate each DO-Conv model unfolded and folded, (4) export the folded
models to ONNX and check them with onnxruntime on a val image, (5)
training-loss curves (paper Fig. 5) and kernel-change maps (Fig. 6), (6)
one results table.  --quick runs a few iterations on tiny inputs (tests).
"""
import argparse
import functools
import json
import os
import os.path as osp
import re
import sys

from mmdoconv.utils.cli import cli_main

# The workshop (synthetic data, recipes, pictures) lives beside tools/ in a
# checkout of the repository, not in the installed plugin.
sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))
from workshop.demo import (Progress, count_parameters,  # noqa: E402
                           detection, first_val_image, metric_from_log, run,
                           segmentation, tool_server, train_step_seconds)
from workshop.plotting import plot_curves  # noqa: E402
from workshop.recipes import as_cli as cfg_options  # noqa: E402
from workshop.synthetic import DEFAULT_ROOTS, write_datasets  # noqa: E402


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-dir', default='data')
    parser.add_argument('--quick', action='store_true',
                        help='a few iterations on tiny inputs (for tests)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the runs of an earlier demo in '
                        '--work-dir (make demo DEMO_ARGS=--overwrite)')
    args = parser.parse_args()
    work_dir, data_dir = osp.abspath(args.work_dir), osp.abspath(args.data_dir)
    if osp.isdir(work_dir) and os.listdir(work_dir) and not args.overwrite:
        raise FileExistsError(
            f'{work_dir!r} holds an earlier demo; pass --overwrite (make demo '
            'DEMO_ARGS=--overwrite) to replace it, or choose another '
            '--work-dir')
    progress = Progress()
    with tool_server() as server:
        run_demo(args, work_dir, data_dir, progress,
                 functools.partial(run, server=server))


def run_demo(args, work_dir: str, data_dir: str, progress: Progress,
             run_tool) -> None:
    """The six phases; ``run_tool(args, log_path)`` runs one tool."""
    overwrite = ['--overwrite'] if args.overwrite else []

    # 1. Data.
    missing = [name for name in ('coco', 'cityscapes') if not osp.isdir(
        osp.join(data_dir, osp.relpath(DEFAULT_ROOTS[name], 'data')))]
    if missing:
        progress(f'1/6 writing synthetic {", ".join(missing)} under {data_dir}')
        write_datasets(missing, data_dir, progress=lambda m: print('    ' + m))
    else:
        progress(f'1/6 synthetic COCO and Cityscapes found under {data_dir}')

    models = [detection(data_dir, args.quick), segmentation(data_dir,
                                                            args.quick)]
    for model in models:
        print(f'    {model.label}: {model.reductions}')
    rows, written = [], []
    for model in models:
        runs = {}
        # 2. Train both variants with one seed and schedule.
        for variant in ('baseline', 'doconv'):
            config = getattr(model, variant)
            run_dir = osp.join(work_dir, model.key, variant)
            progress(f'2/6 training {model.label} {variant} ({config})')
            run_tool(['tools/train.py', config, '--work-dir', run_dir, *overwrite,
                 *cfg_options(model.options)],
                osp.join(run_dir, 'demo_train.log'))
            runs[variant] = run_dir
        checkpoint = osp.join(runs['doconv'], open(osp.join(
            runs['doconv'], 'last_checkpoint')).read().strip())
        # 3. Evaluate unfolded, then folded (tools/test.py --deploy).
        progress(f'3/6 evaluating {model.label} DO-Conv unfolded and folded')
        unfolded_log = run_tool(
            ['tools/test.py', model.doconv, checkpoint, '--work-dir',
             osp.join(runs['doconv'], 'test_unfolded'),
             *cfg_options(model.options)],
            osp.join(runs['doconv'], 'demo_test_unfolded.log'))
        folded_log = run_tool(
            ['tools/test.py', model.doconv, checkpoint, '--deploy',
             '--work-dir', osp.join(runs['doconv'], 'test_folded'),
             *cfg_options(model.options)],
            osp.join(runs['doconv'], 'demo_test_folded.log'))
        baseline_metric = metric_from_log(
            open(osp.join(runs['baseline'], 'demo_train.log')).read(),
            model.metric)
        before = metric_from_log(unfolded_log, model.metric)
        after = metric_from_log(folded_log, model.metric)
        # The fold hook compares raw mode='tensor' outputs on a test batch.
        probe = re.findall(r'max \|Δ\| on a probe batch: ([^)]+)\)',
                           folded_log)
        probe_diff = float(probe[-1]) if probe and probe[-1] != 'n/a' \
            else None
        # 4. ONNX.
        progress(f'4/6 exporting the folded {model.label} to ONNX')
        onnx_path = osp.join(runs['doconv'], f'{model.key}_folded.onnx')
        export_log = run_tool(
            ['tools/deployment/export_onnx.py', model.doconv, checkpoint, onnx_path,
             *overwrite,
             '--image', first_val_image(data_dir, model.key), '--shape',
             *map(str, model.export_shape), *cfg_options(model.options)],
            osp.join(runs['doconv'], 'demo_export.log'))
        onnx_diff = float(export_log.rsplit('onnxruntime|: ', 1)[1].split()[0])
        # 5. Pictures.
        progress(f'5/6 drawing {model.label} curves and kernel maps')
        curves = plot_curves(
            [runs['baseline'], runs['doconv']],
            osp.join(work_dir, f'{model.key}_loss_curves.png'),
            labels=['baseline', 'DO-Conv (task stage)'],
            title=f'{model.label}: training loss (paper Fig. 5)')
        kernels = osp.join(work_dir, f'{model.key}_kernel_maps.png')
        run_tool(['tools/analysis_tools/visualize_kernels.py', model.doconv, checkpoint, kernels,
             '--prefix', model.kernel_prefix, *cfg_options(model.options)],
            osp.join(runs['doconv'], 'demo_kernels.log'), echo=False)
        rows.append(dict(
            model=model.label, metric=model.metric,
            baseline_metric=baseline_metric,
            train_params=count_parameters(model.doconv, model.options,
                                          model.scope, fold=False),
            deployed_params=count_parameters(model.doconv, model.options,
                                             model.scope, fold=True),
            baseline_params=count_parameters(model.baseline, model.options,
                                             model.scope, fold=False),
            baseline_step_s=train_step_seconds(runs['baseline']),
            doconv_step_s=train_step_seconds(runs['doconv']),
            metric_unfolded=before, metric_folded=after,
            fold_max_abs_diff=probe_diff,
            onnx_max_diff=onnx_diff))
        written += [runs['baseline'], runs['doconv'], checkpoint,
                    checkpoint.replace('.pth', '_folded.pth'), onnx_path,
                    curves, kernels]

    # 6. Results.
    progress('6/6 results')
    print(results_table(rows))
    results_path = osp.join(work_dir, 'results.json')
    with open(results_path, 'w') as f:
        json.dump(rows, f, indent=2)
    written.append(results_path)
    print('\nwritten:')
    for path in written:
        print(f'  {path}')
    progress('done')


def results_table(rows) -> str:
    lines = [
        '| model | stage | params (train) | params (deployed) | train step s '
        '| metric | as trained | folded | fold max diff | ONNX max diff |',
        '|---|---|---|---|---|---|---|---|---|---|'
    ]

    def fmt(value):
        return 'n/a' if value is None else f'{value:.4f}'

    for row in rows:
        lines.append(
            f'| {row["model"]} | baseline | {row["baseline_params"]:,} | '
            f'{row["baseline_params"]:,} | {row["baseline_step_s"]:.3f} | '
            f'{row["metric"]} | {fmt(row["baseline_metric"])} | (plain) | - '
            '| - |')
        lines.append(
            f'| {row["model"]} | DO-Conv (task) | {row["train_params"]:,} | '
            f'{row["deployed_params"]:,} | {row["doconv_step_s"]:.3f} | '
            f'{row["metric"]} | {fmt(row["metric_unfolded"])} | '
            f'{fmt(row["metric_folded"])} | {fmt(row["fold_max_abs_diff"])} '
            f'| {row["onnx_max_diff"]:.2g} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
