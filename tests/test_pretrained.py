"""Pretrained starts by name, tested offline for real: the tests build each architecture with random initialisation
(torchvision's own builders, cellpose's own U-Net), save its state dict under the exact file name the library
looks for in a temporary cache folder (TORCH_HOME / CELLPOSE_LOCAL_MODELS_PATH), and check that the name resolves,
that every tensor that should load equals the file's, that a model trains from it, that the loaded / new / skipped
counts are right, that a missing file is one clear error, and that nothing touches the network (every socket is
blocked and each attempt recorded). Budget: about 1 CPU-minute."""
import hashlib, json, socket, urllib.request
from pathlib import Path
import numpy as np, pytest, torch, torchvision

from cellseg_nb.maskrcnn import build_model
from cellseg_nb.maskrcnn_train import train, ArraySource
from cellseg_nb.celltypes import CELL_TYPES
from cellseg_nb.instances import Instances
from cellseg_nb.pretrained import (MissingWeights, resolve_maskrcnn_weights, resolve_cellpose_model, cellpose_models_dir,
                                   torch_cache_dir, CELLPOSE_MODEL_NAMES)
from cellseg_nb.config import get_recipe

torch.set_num_threads(1)

# the tensors of torchvision's COCO Mask R-CNN that depend on COCO's 91 classes or its 3 anchors per location
COCO_HEADS = ['roi_heads.box_predictor.cls_score.weight', 'roi_heads.box_predictor.cls_score.bias',
              'roi_heads.box_predictor.bbox_pred.weight', 'roi_heads.box_predictor.bbox_pred.bias',
              'roi_heads.mask_predictor.mask_fcn_logits.weight', 'roi_heads.mask_predictor.mask_fcn_logits.bias',
              'rpn.head.cls_logits.weight', 'rpn.head.cls_logits.bias', 'rpn.head.bbox_pred.weight', 'rpn.head.bbox_pred.bias']
SMALL = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200,
             rpn_post_nms_top_n_test=100, box_batch_size_per_image=32, rpn_batch_size_per_image=32)
TINY = get_recipe('tiny').model.changed_options()


class Blocked(OSError): pass


class NoNetwork:
    "Every socket (and name lookup, urlopen) raises and is recorded in `attempts`."
    def __init__(self): self.attempts = []
    def _fail(self, what):
        def f(*a, **k):
            self.attempts.append(what); raise Blocked(f"network access attempted: {what}")
        return f
    def __enter__(self):
        self.mp = pytest.MonkeyPatch()
        outer = self
        class _Socket(socket.socket):
            def __init__(self, family=-1, *a, **k):
                if family in (-1, socket.AF_INET, socket.AF_INET6):
                    outer.attempts.append('socket'); raise Blocked("network access attempted: socket()")
                super().__init__(family, *a, **k)
        self.mp.setattr(socket, 'socket', _Socket)
        for name in ('create_connection', 'getaddrinfo', 'gethostbyname'): self.mp.setattr(socket, name, self._fail(name))
        self.mp.setattr(urllib.request, 'urlopen', self._fail('urlopen'))
        return self
    def __exit__(self, *exc): self.mp.undo()


def sha256(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    "Empty torchvision and cellpose cache folders, set through the libraries' own environment variables."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('CELLPOSE_LOCAL_MODELS_PATH', str(tmp_path / 'cellpose'))
    ck = tmp_path / 'torch' / 'hub' / 'checkpoints'; ck.mkdir(parents=True)
    cp = tmp_path / 'cellpose'; cp.mkdir()
    return ck, cp


def _one_image():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 64, 64), bool)
    for i, (y, x) in enumerate([(16, 16), (40, 20), (30, 45)]): masks[i, y - 6:y + 6, x - 6:x + 6] = True
    img = (rng.normal(128, 10, (64, 64)) - 60 * masks.any(0)).clip(0, 255).astype(np.uint8)
    return img, Instances.from_masks(masks, labels=np.array([1, 2, 3]))


def test_coco_by_name_loads_every_fitting_tensor_and_trains(caches, tmp_path):
    ck, _ = caches
    torch.manual_seed(1)
    coco = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    f = ck / 'maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth'       # torchvision's file name for MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    torch.save(coco, f)
    assert torch_cache_dir() == ck
    with NoNetwork() as net:
        torch.manual_seed(0)
        m = build_model(3, 'resnet50', weights='coco', **SMALL)
        own = m.state_dict()
        coco = {k: v for k, v in coco.items() if not k.endswith('num_batches_tracked')}   # counters: not loaded, not counted
        for k, v in coco.items():
            if k in COCO_HEADS: assert own[k].shape != v.shape, k          # 91 classes / 3 anchors: kept as initialised
            else: assert torch.equal(own[k], v), k
        r = m.pretrained
        assert (r['name'], r['kind'], r['file'], r['sha256']) == ('coco', 'torchvision', f.name, sha256(f))
        assert (r['loaded'], r['new'], r['skipped']) == (len(coco) - 10, 10, 10)
        assert sorted(r['new_keys']) == sorted(COCO_HEADS) == sorted(r['skipped_keys'])
        # one training step from it; the checkpoint keeps the record
        img, inst = _one_image()
        res = train((ArraySource([img], [inst], class_names=CELL_TYPES), None), tmp_path / 'run', backbone='resnet50', weights='coco', iterations=1,
                    batch_size=1, optimizer='adamw', lr=1e-4, warmup=0, augment=False, val_every=10, model_options=SMALL,
                    progress=False, device='cpu')
        assert np.isfinite(res['log'].loss.iloc[-1])
        saved = torch.load(res['checkpoint'], weights_only=True)
        assert saved['pretrained']['sha256'] == sha256(f) and saved['pretrained']['loaded'] == len(coco) - 10
        assert saved['config']['norm'] == 'frozen_bn'
        # the bundle's manifest records the start
        from cellseg_nb.bundle import write_bundle
        man = json.loads((write_bundle(tmp_path / 'bundle', maskrcnn=res['checkpoint']) / 'manifest.json').read_text())
        assert man['pretrained']['maskrcnn'] == dict(name='coco', kind='torchvision', file=f.name, sha256=sha256(f),
                                                     loaded=len(coco) - 10, new=10, skipped=10)
    assert net.attempts == []


def test_v2_architecture_matches_torchvision_and_loads_its_coco_weights(caches):
    ck, _ = caches
    v2 = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()
    torch.save(v2, ck / 'maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth')
    with NoNetwork() as net:
        m = build_model(3, 'resnet50', weights='coco', arch='maskrcnn_resnet50_fpn_v2', **SMALL)
    assert net.attempts == []
    real = {k: v for k, v in v2.items() if not k.endswith('num_batches_tracked')}
    own = m.state_dict()
    assert set(real) - set(own) == set() and {k for k in own if not k.endswith('num_batches_tracked')} == set(real)
    for k, v in real.items():
        if k not in COCO_HEADS: assert torch.equal(own[k], v), k
    assert (m.pretrained['loaded'], m.pretrained['new'], m.pretrained['skipped']) == (len(real) - 10, 10, 10)
    # it trains: one step on a small image with sparse mask targets
    from cellseg_nb.maskrcnn_train import CellDataset
    img, inst = _one_image()
    x, t = CellDataset(ArraySource([img], [inst]), augment=False)[(0, 0, 0)]
    m.train()
    loss = sum(m([x], [t]).values())
    loss.backward()
    assert torch.isfinite(loss) and m.roi_heads.box_head[0][0].weight.grad is not None
    with pytest.raises(ValueError, match='needs backbone resnet50'):
        build_model(3, 'resnet18', arch='maskrcnn_resnet50_fpn_v2')


def test_imagenet_by_name_loads_the_backbone_only(caches):
    ck, _ = caches
    rn = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(rn, ck / 'resnet18-f37072fd.pth')              # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1
    with NoNetwork() as net:
        m = build_model(3, 'resnet18', weights='imagenet', **TINY)
    assert net.attempts == []
    real = {k: v for k, v in rn.items() if not k.endswith('num_batches_tracked')}
    body = m.backbone.body.state_dict()
    for k, v in real.items():
        if not k.startswith('fc.'): assert torch.equal(body[k], v), k
    n_model = sum(not k.endswith('num_batches_tracked') for k in m.state_dict())
    r = m.pretrained
    assert (r['loaded'], r['skipped'], r['new']) == (len(real) - 2, 2, n_model - (len(real) - 2))
    assert sorted(r['skipped_keys']) == ['fc.bias', 'fc.weight']


def test_missing_names_are_one_clear_error_without_network(caches, tmp_path):
    ck, cp = caches
    with NoNetwork() as net:
        with pytest.raises(MissingWeights) as e:
            build_model(3, 'resnet50', weights='coco')
        msg = str(e.value)
        assert 'maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth' in msg and str(ck) in msg and '--download' in msg
        assert 'https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth' in msg
        with pytest.raises(MissingWeights, match=f"livecell_cp3 is not in {cp}.*https://www.cellpose.org/models/livecell_cp3"):
            resolve_cellpose_model('livecell_cp3')
        with pytest.raises(FileNotFoundError, match='not found'):           # not a name: a path, and no fallback to cyto3
            resolve_cellpose_model('cyto9')
        with pytest.raises(ValueError, match='resnet50 FPN only'):
            build_model(3, 'resnet18', weights='coco', **TINY)
        assert net.attempts == []
        # --download is the only way to the network: it goes there (and, blocked here, fails naming the URL)
        with pytest.raises(RuntimeError, match='download of https://download.pytorch.org/models/resnet18-f37072fd.pth failed'):
            resolve_maskrcnn_weights('imagenet', backbone='resnet18', download=True)
        assert net.attempts
    assert not any(ck.iterdir())


def test_files_that_do_not_fit_are_errors(caches, tmp_path):
    torch.save({'backbone.nothing': torch.ones(3)}, tmp_path / 'nothing.pt')
    with pytest.raises(ValueError, match='no tensor of the file matches'):
        build_model(3, 'resnet18', weights=tmp_path / 'nothing.pt', **TINY)
    # a resnet50 COCO file into a resnet18 model: heads may differ, the backbone may not
    torch.save(torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
               tmp_path / 'coco.pth')
    with pytest.raises(ValueError, match='does not fit this model: the backbone would be left partly unloaded'):
        build_model(3, 'resnet18', weights=tmp_path / 'coco.pth', **TINY)


# ---- cellpose's model folder

def test_cellpose_names_are_cellposes_own():
    from cellpose import models
    assert set(CELLPOSE_MODEL_NAMES) == set(models.MODEL_NAMES)


def _cp_net(seed):
    from cellpose.resnet_torch import CPnet
    torch.manual_seed(seed)
    return CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=30.).state_dict()


def test_cellpose_zoo_by_name_trains_and_predicts_offline(caches, tmp_path, monkeypatch):
    from cellseg_nb import cpose, cli
    from cellseg_nb.synth import synth_image
    _, cp = caches
    other = tmp_path / 'elsewhere'; other.mkdir()
    monkeypatch.setenv('CELLPOSE_LOCAL_MODELS_PATH', str(other))      # read at call time, not at import
    assert cellpose_models_dir() == other
    monkeypatch.setenv('CELLPOSE_LOCAL_MODELS_PATH', str(cp))
    lc, c2 = _cp_net(1), _cp_net(2)
    torch.save(lc, cp / 'livecell_cp3')
    torch.save(c2, cp / 'cyto2torch_0')                           # cellpose's file names: cyto2 -> cyto2torch_0 ...
    np.save(cp / 'size_cyto2torch_0.npy', {'A': np.zeros(256), 'smean': np.zeros(256), 'diam_mean': 30., 'ymean': np.log(0.5)})
    items = [synth_image('shsy5y', [0, i], (96, 96), level=3.0) for i in range(2)]
    ts = cpose.TrainingSet.from_arrays([x[0] for x in items], [x[1] for x in items], ['shsy5y'] * 2)
    real = [k for k in lc if not k.endswith('num_batches_tracked')]
    with NoNetwork() as net:
        # learning rate 0: the trained weights are exactly the file's (BatchNorm statistics move), so the start was livecell_cp3
        path = cpose.train_cellpose(ts, tmp_path / 'cp', pretrained_model='livecell_cp3', n_epochs=1, bsize=64, batch_size=8,
                                    nimg_per_epoch=8, learning_rate=0.0, diam_mean=12., progress=False)
        trained = torch.load(path, weights_only=True)
        for k in real:
            if not k.startswith('diam') and 'running_' not in k: assert torch.equal(trained[k], lc[k]), k
        rec = json.loads(Path(str(path) + '.json').read_text())['pretrained']
        assert (rec['name'], rec['kind'], rec['file'], rec['sha256']) == ('livecell_cp3', 'cellpose', 'livecell_cp3', sha256(cp / 'livecell_cp3'))
        assert (rec['loaded'], rec['new'], rec['skipped'], rec['diam_mean']) == (len(real), 0, 0, 30.0)
        assert float(trained['diam_mean']) == 30.0                 # the zoo model's diameter, not the recipe's 12
        # stock models by name for prediction: the file's tensors, and cyto2's size model from cellpose's folder
        b = cpose.load_model('cyto2')
        sd = b.cp.net.state_dict()
        assert all(torch.equal(sd[k], c2[k]) for k in c2 if not k.endswith('num_batches_tracked'))
        assert b.size is not None and Path(b.size.pretrained_size) == cp / 'size_cyto2torch_0.npy'
        assert cpose.load_model('livecell_cp3').size is None        # cellpose has no size model for it
        # cellseg predict --cellpose livecell_cp3: a stock model on the user's images, no training
        imgs = tmp_path / 'imgs'; imgs.mkdir()
        import cv2
        for i, x in enumerate(items): cv2.imwrite(str(imgs / f'im{i}.png'), x[0])
        assert cli.main(['predict', '--cellpose', 'livecell_cp3', '--images', str(imgs), '--cell_type', 'shsy5y',
                         '--out', str(tmp_path / 'sub.csv'), '--device', 'cpu']) == 0
        assert (tmp_path / 'sub.csv').is_file()
        from cellseg_nb.bundle import write_bundle
        man = json.loads((write_bundle(tmp_path / 'bundle', cellpose=path) / 'manifest.json').read_text())
        assert man['pretrained']['cellpose']['sha256'] == sha256(cp / 'livecell_cp3')
        # a file that is not a cellpose U-Net is refused before cellpose sees it
        torch.save({'x': torch.ones(2)}, tmp_path / 'junk')
        with pytest.raises(ValueError, match='no tensor of the file matches'):
            cpose.train_cellpose(ts, tmp_path / 'cp2', pretrained_model=tmp_path / 'junk', n_epochs=1, progress=False)
        with pytest.raises(MissingWeights, match='nuclei'):
            cpose.load_model('nuclei')
    assert net.attempts == []
