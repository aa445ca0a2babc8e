"""`cellseg demo --quick` through the command line, then the offline Kaggle kernel (kaggle/cellseg-inference/)
run end to end on a local folder laid out like /kaggle/input, holding the demo's synthetic competition data and
the two tiny models it trained, with no install step (the wheels bundle is tested in test_cli.py). The submission
the kernel writes is validated independently."""
import json, shutil
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / 'kaggle' / 'cellseg-inference'
NB = KERNEL / 'cellseg-inference.ipynb'


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "The quick demo (tiny images, 2 Mask R-CNN iterations, 1 Cellpose epoch) run through `cellseg demo`."
    import torch
    from cellseg_nb import cli
    out = tmp_path_factory.mktemp('demo')
    threads = torch.get_num_threads()
    try: rc = cli.main(['demo', '--quick', '--out', str(out), '--device', 'cpu'])
    finally: torch.set_num_threads(threads)
    assert rc == 0
    return out


def test_quick_demo_writes_everything(demo):
    from cellseg_nb.submission import validate_submission
    for f in ['data/train.csv', 'models/maskrcnn/checkpoint.pt', 'models/cellpose/cellpose', 'postprocess.yaml',
              'predictions/maskrcnn_raw.csv', 'predictions/cellpose_raw.csv', 'predictions/ensemble_raw.csv',
              'results.csv', 'submission.csv', 'report.md', 'figures/map_per_type.png', 'figures/iou_hist.png',
              'figures/errors_by_size.png', 'figures/overlays.png']:
        assert (demo / f).is_file(), f
    report = (demo / 'report.md').read_text()
    for part in ['Synthetic data', '## Results on the held-out test fold', 'mAP per cell type', '## Submission',
                 'figures/overlays.png']:
        assert part in report, part
    res = pd.read_csv(demo / 'results.csv')
    assert {'maskrcnn', 'cellpose', 'ensemble'} <= set(res.model) and {'AP@0.5', 'AP@0.75', 'AP@0.9', 'mAP'} <= set(res.columns)
    assert validate_submission(demo / 'submission.csv', demo / 'data' / 'test', shape=(96, 96)).ok


def test_kernel_metadata_is_offline_and_points_at_the_notebook():
    meta = json.loads((KERNEL / 'kernel-metadata.json').read_text())
    assert meta['code_file'] == NB.name and (KERNEL / meta['code_file']).is_file()
    assert meta['enable_internet'] is False and meta['kernel_type'] == 'notebook'
    assert 'sartorius-cell-instance-segmentation' in meta['competition_sources']
    assert any(s.endswith('/cellseg-wheels') for s in meta['dataset_sources'])
    assert any(s.endswith('/cellseg-weights') for s in meta['dataset_sources'])


@pytest.fixture(scope='module')
def kaggle_input(demo, tmp_path_factory):
    "A folder like /kaggle/input: the competition data and a cellseg-weights data set with the demo's models."
    inp = tmp_path_factory.mktemp('input')
    shutil.copytree(demo / 'data', inp / 'sartorius-cell-instance-segmentation')
    w = inp / 'cellseg-weights'; w.mkdir()
    shutil.copy(demo / 'models' / 'maskrcnn' / 'checkpoint.pt', w / 'maskrcnn.pth')
    for f in (demo / 'models' / 'cellpose').glob('cellpose*'):
        if f.is_file(): shutil.copy(f, w / f.name)
    shutil.copy(demo / 'postprocess.yaml', w / 'postprocess.yaml')
    return inp


def test_kernel_runs_offline_and_writes_a_valid_submission(kaggle_input, tmp_path):
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from cellseg_nb.submission import validate_submission
    out = tmp_path / 'working'; out.mkdir()
    nb = read_nb(NB)
    idx = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'code')     # the parameters cell
    src = nb.cells[idx].source
    assert "INPUT = '/kaggle/input'" in src and "OUTPUT = '/kaggle/working'" in src and 'INSTALL = True' in src
    params = src + f"""
INPUT = {str(kaggle_input)!r}
COMPETITION = f'{{INPUT}}/sartorius-cell-instance-segmentation'
WHEELS = f'{{INPUT}}/cellseg-wheels'
MASKRCNN = f'{{INPUT}}/cellseg-weights/maskrcnn.pth'
CELLPOSE = f'{{INPUT}}/cellseg-weights/cellpose'
POSTPROCESS = f'{{INPUT}}/cellseg-weights/postprocess.yaml'
OUTPUT = {str(out)!r}
INSTALL = False
TTA = False          # flip TTA is tested in nbs/15_inference; here it would triple the run time
DEVICE = 'cpu'
"""
    shell = CaptureShell()
    shell.run_all(nb, exc_stop=True, inject_code=params, inject_idx=idx)
    sub = out / 'submission.csv'
    assert sub.is_file()
    test_dir = kaggle_input / 'sartorius-cell-instance-segmentation' / 'test'
    test_ids = sorted(p.stem for p in test_dir.glob('*.png'))
    report = validate_submission(sub, test_dir, shape=(96, 96))
    assert report.ok, str(report)
    df = pd.read_csv(sub, keep_default_na=False)
    assert list(df.columns) == ['id', 'predicted'] and sorted(df.id.unique()) == test_ids
    outputs = ''.join(str(o) for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    assert 'wrote and validated' in outputs and 'ensemble' in outputs
