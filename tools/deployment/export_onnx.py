"""Fold a DO-Conv model, export it to ONNX and check it with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--image IMG]

The graph takes the preprocessed batch and returns what the model's
``mode='tensor'`` forward returns; where that forward cannot be exported (mmdet
3.3's two-stage detectors), its dense part, with the reason printed (see
mmdoconv.deploy.export).  Prints the ONNX node histogram and the max
|PyTorch - onnxruntime| difference on the traced batch and on a second one.
"""
import argparse
import os.path as osp
import tempfile

import torch
from mmengine.runner import load_checkpoint

import mmdoconv  # noqa: F401
from mmdoconv.deploy import plain_config
from mmdoconv.deploy.export import (dummy_inputs, example_data_samples,
                                    export_onnx,
                                    onnx_difference, node_histogram)
from mmdoconv.utils.cli import (BadInputError, DictAction, cli_main,
                                build_model, load_config, require_file,
                                require_new_output)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='model config (DO-Conv or plain)')
    parser.add_argument('checkpoint', help='checkpoint to export')
    parser.add_argument('out', help='output .onnx file')
    parser.add_argument(
        '--shape', type=int, nargs=2, default=[512, 512],
        metavar=('HEIGHT', 'WIDTH'), help='input height and width')
    parser.add_argument(
        '--image', help='an image to export and check with (resized to '
        '--shape and preprocessed by the model); random input otherwise')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset')
    parser.add_argument(
        '--part', choices=['tensor', 'dense'],
        help="what to export: the mode='tensor' forward or the dense part "
        "(extract_feat and the heads that take its features); default: "
        "'tensor', falling back to 'dense' with the reason printed")
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT if it exists')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value pairs')
    return parser.parse_args()


def image_inputs(model, path: str, height: int, width: int) -> torch.Tensor:
    """Read, resize and preprocess one image as the model's test path does."""
    import mmcv
    image = mmcv.imresize(mmcv.imread(path), (width, height))
    tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    data = model.data_preprocessor(
        dict(inputs=[tensor], data_samples=None), False)
    return data['inputs']


def plain_histogram(cfg, folded_model, inputs, graph) -> dict:
    """Node histogram of the same export of the plain model (the config
    without DO-Conv) holding the folded weights."""
    plain = build_model(plain_config(cfg))
    plain.load_state_dict(folded_model.state_dict(), strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'plain.onnx')
        export_onnx(plain, inputs, path, graph.opset_version, graph.part,
                    graph.data_samples, log=lambda msg: None)
        return node_histogram(path)


@cli_main
def main() -> None:
    args = parse_args()
    if not args.out.endswith('.onnx'):
        raise BadInputError(f'OUT must end with .onnx, but got {args.out!r}')
    if min(args.shape) <= 0:
        raise BadInputError(f'--shape must be positive, but got {args.shape}')
    require_new_output(args.out, args.overwrite)
    if not osp.isdir(osp.dirname(osp.abspath(args.out))):
        raise BadInputError(f'the folder of OUT {args.out!r} does not exist')
    require_file(args.checkpoint, 'checkpoint')
    require_file(args.image, '--image')
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()
    height, width = args.shape
    inputs = image_inputs(model, args.image, height, width) if args.image \
        else dummy_inputs((1, 3, height, width))
    graph = export_onnx(model, inputs, args.out, args.opset, args.part,
                        example_data_samples(cfg, inputs),
                        log=lambda msg: print(f'note: {msg}'))
    # A second batch catches a graph that baked the traced input's
    # data-dependent shapes into constants.
    other = dummy_inputs(tuple(inputs.shape), seed=1) * inputs.std() \
        + inputs.mean()
    difference = max(onnx_difference(graph, args.out, batch)
                     for batch in (inputs, other))
    ops = ', '.join(f'{k}: {v}' for k, v in sorted(
        node_histogram(args.out).items()))
    plain_ops = plain_histogram(cfg, model, inputs, graph)
    if plain_ops != node_histogram(args.out):
        raise RuntimeError(
            f'the ONNX graph differs from the plain model\'s: {ops} against '
            + ', '.join(f'{k}: {v}' for k, v in sorted(plain_ops.items())))
    print(f'folded {graph.folded} DO-Conv layers; exported the '
          f"{'mode=tensor forward' if graph.part == 'tensor' else 'dense part'}"
          f' ({graph.num_outputs} outputs); wrote {args.out}')
    print(f'ONNX nodes (the same as the plain model\'s): {ops}')
    print(f'max |PyTorch - onnxruntime|: {difference:.3g}')


if __name__ == '__main__':
    main()
