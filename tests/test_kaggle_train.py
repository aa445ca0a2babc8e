"""The Kaggle training kernel (kaggle/cellseg-train/) run end to end on a small synthetic folder laid out like
/kaggle/input (competition data with LIVECell inside, a data set holding the libraries' cache folders with
pretrained files made here: a random resnet18 saved under torchvision's ImageNet file name and a random cellpose
U-Net saved as cellpose's `livecell_cp3`), with the `tiny` recipe: once without a stop, once stopped by its time
budget in the middle of Mask R-CNN training, and once more with the stopped run's output attached as PREVIOUS.
The resumed run's bundle must equal the uninterrupted run's, file by file. Budget: about 2 CPU-minutes."""
import json, re, shutil
from pathlib import Path
import numpy as np, pytest, torch

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / 'kaggle' / 'cellseg-train'
NB = KERNEL / 'cellseg-train.ipynb'


def test_kernel_metadata_trains_on_gpu_with_internet():
    meta = json.loads((KERNEL / 'kernel-metadata.json').read_text())
    assert meta['code_file'] == NB.name and (KERNEL / meta['code_file']).is_file()
    assert meta['enable_gpu'] is True and meta['enable_internet'] is True and meta['kernel_type'] == 'notebook'
    assert 'sartorius-cell-instance-segmentation' in meta['competition_sources']
    assert any(s.endswith('/cellseg-wheels') for s in meta['dataset_sources'])


@pytest.fixture(scope='module')
def kaggle_input(tmp_path_factory):
    from cellseg_nb.synth import make_competition
    import torchvision
    from cellpose.resnet_torch import CPnet
    inp = tmp_path_factory.mktemp('input')
    make_competition(inp / 'sartorius-cell-instance-segmentation', n_images={'shsy5y': 3, 'astro': 3, 'cort': 3}, seed=0, image_shape=(96, 96), n_test=0,
                     n_semi=0, livecell=6)
    ck = inp / 'cellseg-pretrained' / 'torch' / 'hub' / 'checkpoints'; ck.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ck / 'resnet18-f37072fd.pth')
    cp = inp / 'cellseg-pretrained' / 'cellpose'; cp.mkdir()
    torch.save(CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True).state_dict(), cp / 'livecell_cp3')
    return inp


def run_kernel(inp, out, hours=10.0, maskrcnn_hours=None):
    "Run the kernel notebook in this process on `inp` (like /kaggle/input) writing to `out`; returns its printed text."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    nb = read_nb(NB)
    idx = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'code')     # the parameters cell
    src = nb.cells[idx].source
    for p in ("INPUT = '/kaggle/input'", "OUTPUT = '/kaggle/working'", "PREVIOUS = f'{INPUT}/cellseg-train'",
              "PRETRAINED = f'{INPUT}/cellseg-pretrained'", "RECIPE = 'competition'", 'TIME_BUDGET_H = ', 'MASKRCNN_H = None', 'INSTALL = True'):
        assert p in src, p
    params = src + f"""
INPUT = {str(inp)!r}
COMPETITION = f'{{INPUT}}/sartorius-cell-instance-segmentation'
PRETRAINED = f'{{INPUT}}/cellseg-pretrained'
PREVIOUS = f'{{INPUT}}/cellseg-train'
OUTPUT = {str(out)!r}
RECIPE = 'tiny'
MASKRCNN_WEIGHTS = 'imagenet'     # the tiny recipe's resnet18 has ImageNet weights (COCO's are resnet50 only)
CELLPOSE_PRETRAINED = 'livecell_cp3'
DOWNLOAD = False
FOLD, N_FOLDS = 0, 3
TIME_BUDGET_H = {hours!r}
MASKRCNN_H = {maskrcnn_hours!r}
INSTALL = False
DEVICE = 'cpu'
"""
    CaptureShell().run_all(nb, exc_stop=True, inject_code=params, inject_idx=idx)
    return '\n'.join(o.get('text', '') if isinstance(o.get('text'), str) else ''.join(o.get('text', []))
                     for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))


def _seconds(text, pattern):
    "Elapsed seconds of the first progress line matching `pattern`."
    m = re.search(r'\[elapsed (\d+):(\d\d):(\d\d) \| left [^\]]*\] ' + pattern, text)
    assert m, pattern
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])


def _bundle_files(bundle):
    "The bundle's files as {name: bytes}, with cellpose.json's timings left out (the only thing that may differ)."
    out = {}
    for f in sorted(bundle.iterdir()):
        if f.name == 'manifest.json': continue
        if f.name == 'cellpose.json':
            d = json.loads(f.read_text())
            for s in d['stages']: s.pop('seconds')
            out[f.name] = d
        else: out[f.name] = f.read_bytes()
    return out


def test_kernel_stops_on_its_time_budget_and_resumes_to_the_same_bundle(kaggle_input, tmp_path, monkeypatch):
    for var in ('TORCH_HOME', 'CELLPOSE_LOCAL_MODELS_PATH', 'CELLSEG_DATA'): monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    try:
        full = tmp_path / 'full'; full.mkdir()
        text = run_kernel(kaggle_input, full)                          # 1. uninterrupted
        assert 'pretrained start imagenet' in text and 'pretrained start livecell_cp3' in text
        a, b = _seconds(text, 'Mask R-CNN: cellseg'), _seconds(text, 'Mask R-CNN: done')
        manifest = json.loads((full / 'bundle' / 'manifest.json').read_text())
        assert manifest['pretrained']['maskrcnn']['via']['name'] == 'imagenet'     # LIVECell stage started from it
        assert manifest['pretrained']['cellpose']['name'] == 'livecell_cp3'
        # 2. stopped by its time budget in the middle of Mask R-CNN training (the Mask R-CNN share of the budget set to
        # half of the first run's Mask R-CNN time; shorter when this run happens to be faster and does not stop)
        for frac in (0.5, 0.2, 0.05):
            stopped = tmp_path / f'stopped{frac}'; stopped.mkdir()
            text2 = run_kernel(kaggle_input, stopped, maskrcnn_hours=frac * (b - a) / 3600)
            if 'Mask R-CNN: stopped by the time budget' in text2: break
        assert 'Mask R-CNN: stopped by the time budget' in text2 and not (stopped / 'bundle').exists()
        assert 'Cellpose: not started' in text2 and not (stopped / 'runs' / 'cellpose' / 'cellpose').exists()
        iters = lambda d: {p.parent.name: torch.load(p, weights_only=True)['iteration']
                           for p in (d / 'runs' / 'maskrcnn').rglob('checkpoint.pt')}
        it_full, it_stopped = iters(full), iters(stopped)
        assert it_stopped and sum(it_stopped.values()) < sum(it_full.values())      # the run really was cut short
        # 3. a new run with the stopped run's output attached resumes and finishes
        shutil.copytree(stopped, kaggle_input / 'cellseg-train')
        resumed = tmp_path / 'resumed'; resumed.mkdir()
        text3 = run_kernel(kaggle_input, resumed)
        assert 'copied the previous run' in text3 and 'bundle: done' in text3
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(kaggle_input / 'cellseg-train', ignore_errors=True)
    A, C = _bundle_files(full / 'bundle'), _bundle_files(resumed / 'bundle')
    assert sorted(A) == sorted(C)
    for name in A: assert A[name] == C[name], name
    ma, mc = (json.loads((d / 'bundle' / 'manifest.json').read_text()) for d in (full, resumed))
    assert ma['pretrained'] == mc['pretrained']
    files = lambda m: {k: v for k, v in m['files'].items() if k != 'cellpose.json'}
    assert files(ma) == files(mc)
