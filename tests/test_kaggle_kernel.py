"""`cellseg demo --quick` through the command line, then the offline Kaggle kernel (kaggle/cellseg-inference/)
run end to end on a local folder laid out like /kaggle/input, holding the demo's synthetic competition data and
a bundle (`cellseg_nb.bundle`) of the two tiny models it trained, with no install step (the wheels bundle is tested
in test_cli.py and test_kaggle_bundle.py). The submission the kernel writes is validated independently; a wrong
bundle path and a changed bundle file stop the kernel with a message naming them."""
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
    "A folder like /kaggle/input: the competition data and the cellseg-weights bundle of the demo's models."
    from cellseg_nb.bundle import write_bundle
    inp = tmp_path_factory.mktemp('input')
    shutil.copytree(demo / 'data', inp / 'sartorius-cell-instance-segmentation')
    write_bundle(inp / 'cellseg-weights', maskrcnn=demo / 'models' / 'maskrcnn' / 'checkpoint.pt',
                 cellpose=demo / 'models' / 'cellpose' / 'cellpose', postprocess=demo / 'postprocess.yaml')
    return inp


def run_kernel(inp, out, bundle=None, tta=False):
    "Run the kernel notebook in this process on `inp` (like /kaggle/input), writing to `out`; returns the notebook."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    nb = read_nb(NB)
    idx = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'code')     # the parameters cell
    src = nb.cells[idx].source
    assert "INPUT = '/kaggle/input'" in src and "OUTPUT = '/kaggle/working'" in src and 'INSTALL = True' in src
    assert "BUNDLE = f'{INPUT}/cellseg-weights'" in src
    params = src + f"""
INPUT = {str(inp)!r}
COMPETITION = f'{{INPUT}}/sartorius-cell-instance-segmentation'
WHEELS = f'{{INPUT}}/cellseg-wheels'
BUNDLE = {str(bundle or Path(inp) / 'cellseg-weights')!r}
OUTPUT = {str(out)!r}
INSTALL = False
TTA = {tta!r}          # flip TTA is tested in nbs/15_inference and test_fullsize; here it would triple the run time
DEVICE = 'cpu'
"""
    CaptureShell().run_all(nb, exc_stop=True, inject_code=params, inject_idx=idx)
    return nb


def test_kernel_runs_offline_and_writes_a_valid_submission(kaggle_input, tmp_path):
    from cellseg_nb.submission import validate_submission
    out = tmp_path / 'working'; out.mkdir()
    nb = run_kernel(kaggle_input, out)
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
    assert 'maskrcnn.pth' in outputs and 'postprocess.yaml' in outputs           # the bundle's file table


def test_kernel_stops_on_a_wrong_or_changed_bundle(kaggle_input, tmp_path):
    "No silent fallback: a wrong bundle path and a file changed after bundling stop the kernel, naming them."
    out = tmp_path / 'working'; out.mkdir()
    with pytest.raises(FileNotFoundError, match=f"bundle folder not found: {tmp_path / 'nowhere'}"):
        run_kernel(kaggle_input, out, bundle=tmp_path / 'nowhere')
    changed = tmp_path / 'changed'
    shutil.copytree(kaggle_input / 'cellseg-weights', changed)
    with open(changed / 'postprocess.yaml', 'a') as f: f.write('# edited after bundling\n')
    with pytest.raises(ValueError, match=f"{changed / 'postprocess.yaml'}: changed or corrupted"):
        run_kernel(kaggle_input, out, bundle=changed)
    assert not (out / 'submission.csv').exists()
