"""tools/misc/gpu_check.py, the prepared GPU check: its arguments and its
report, on CPU (the compose part through Triton's interpreter) until a GPU
is lent."""
import re

from runs import run_python, tool_env

TOOL = 'tools/misc/gpu_check.py'


def _one_line_error(result, phrase):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert phrase in lines[0], lines[0]


def test_refuses_cuda_without_a_gpu_and_compose_without_the_interpreter(
        tmp_path):
    _one_line_error(run_python(TOOL, '--out', str(tmp_path / 'r.md'),
                               check=False),
                    '--device cuda, but torch sees no CUDA device')
    _one_line_error(run_python(TOOL, '--device', 'cpu', '--out',
                               str(tmp_path / 'r.md'), check=False),
                    '--parts compose on cpu needs TRITON_INTERPRET=1')
    _one_line_error(run_python(TOOL, '--device', 'cpu', '--parts', 'fold',
                               '--repeats', '0', check=False),
                    '--repeats must be >= 1, but got 0')
    (tmp_path / 'r.md').write_text('precious')
    _one_line_error(run_python(TOOL, '--device', 'cpu', '--parts', 'fold',
                               '--out', str(tmp_path / 'r.md'), check=False),
                    'exists; pass --overwrite')
    assert (tmp_path / 'r.md').read_text() == 'precious'


def test_report_on_cpu(tmp_path):
    out = tmp_path / 'report.md'
    result = run_python(TOOL, '--device', 'cpu', '--parts', 'compose',
                        'fold', 'layers', '--layer-shapes', '8x6',
                        '--repeats', '1', '--out', str(out),
                        env=tool_env(TRITON_INTERPRET='1'), timeout=600)
    report = out.read_text()
    printed = [line for line in result.stdout.splitlines()
               if ' - mmengine - ' not in line]
    assert '\n'.join(printed).strip() == report.strip()
    sections = re.findall(r'^## (.+) \(\d+ s\)$', report, re.M)
    assert sections == ['Triton composition against pure PyTorch',
                        'Folded = unfolded',
                        'Layer level (ratios against nn.Conv2d)']
    compose_rows = re.findall(r'^\| \(\d+, .*\| (ok|\*\*differs\*\*) \|$',
                              report, re.M)
    assert compose_rows == ['ok'] * 12
    assert 'Layer self-check (no_grad, TF32 matmuls on): passed' in report
    assert re.search(r'^\| ResNet-18 \(random D\), 2x3x64x64 \| 17 \| '
                     r'\d\.\de[-+]\d\d \| ok \|$', report, re.M), report
    assert report.count('| 8, 6×6, 3×3 dense |') == 2  # fp32 and AMP tables
    assert report.rstrip().endswith('All checks passed.')
