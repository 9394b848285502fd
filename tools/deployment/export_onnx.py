"""Fold a DO-Conv model, export it to ONNX and check it with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--image IMG]

The graph takes the preprocessed batch (see mmdoconv.deploy.export for what each
kind of model exports).  Prints the max |PyTorch - onnxruntime| difference.
"""
import argparse

import torch
from mmengine.runner import load_checkpoint

import mmdoconv  # noqa: F401
from mmdoconv.deploy.export import (dummy_inputs, export_onnx,
                                    max_abs_difference, node_histogram)
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


@cli_main
def main() -> None:
    args = parse_args()
    if not args.out.endswith('.onnx'):
        raise BadInputError(f'OUT must end with .onnx, but got {args.out!r}')
    if min(args.shape) <= 0:
        raise BadInputError(f'--shape must be positive, but got {args.shape}')
    require_new_output(args.out, args.overwrite)
    require_file(args.checkpoint, 'checkpoint')
    require_file(args.image, '--image')
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()
    height, width = args.shape
    inputs = image_inputs(model, args.image, height, width) if args.image \
        else dummy_inputs((1, 3, height, width))
    folded = export_onnx(model, inputs, args.out, args.opset)
    difference = max_abs_difference(model, args.out, inputs)
    ops = ', '.join(f'{k}: {v}' for k, v in sorted(
        node_histogram(args.out).items()))
    print(f'folded {folded} DO-Conv layers; wrote {args.out}')
    print(f'ONNX nodes: {ops}')
    print(f'max |PyTorch - onnxruntime|: {difference:.3g}')


if __name__ == '__main__':
    main()
