"""Mask R-CNN on CPU with a tiny resnet18-FPN and small synthetic images: it learns, and bad inputs fail clearly."""
import warnings
import numpy as np, pytest, torch
from cellseg_nb.synth import make_competition
from cellseg_nb.data import SartoriusData
from cellseg_nb.instances import Instances
from cellseg_nb.maskrcnn import build_model, predict, load_model
from cellseg_nb.maskrcnn_train import train, validate, CellDataset, ArraySource
from cellseg_nb.config import get_recipe
from cellseg_nb.celltypes import CELL_TYPES

torch.set_num_threads(1)

# resnet18 FPN with narrow heads and small RPN/ROI batches: about 1 s per iteration (batch 2, 128 px) on 2 shared cores
TINY = {**get_recipe('tiny').model.changed_options(), 'min_size': 128, 'max_size': 128, 'rpn_pre_nms_top_n_train': 600,
        'rpn_post_nms_top_n_train': 300, 'rpn_pre_nms_top_n_test': 600, 'rpn_post_nms_top_n_test': 300}   # tiny at 128 px
FAST = dict(backbone='resnet18', model_options=TINY, progress=False)


@pytest.fixture(scope='module')
def shsy5y_root(tmp_path_factory):
    "4 synthetic shsy5y images of 128 x 128 (13-24 cells each) in the competition layout."
    return make_competition(tmp_path_factory.mktemp('comp'), n_images={'shsy5y': 4, 'astro': 0, 'cort': 0}, seed=0,
                            image_shape=(128, 128), n_test=0, n_semi=0)


@pytest.fixture(scope='module')
def heldout_root(tmp_path_factory):
    "3 more synthetic shsy5y images of 128 x 128 from another seed: never seen in training."
    return make_competition(tmp_path_factory.mktemp('heldout'), n_images={'shsy5y': 3, 'astro': 0, 'cort': 0}, seed=7,
                            image_shape=(128, 128), n_test=0, n_semi=0)


def test_training_raises_the_metric(shsy5y_root, heldout_root, tmp_path):
    """80 iterations from scratch lift the competition score well above the untrained model's, on the training images
    and on held-out images of another seed that training never saw."""
    src, held = SartoriusData(shsy5y_root), SartoriusData(heldout_root)
    assert not set(src.ids) & set(held.ids)
    torch.manual_seed(0)
    untrained = build_model(3, 'resnet18', **TINY)
    before, before_held = validate(untrained, src, src.ids), validate(untrained, held, held.ids)
    r = train(shsy5y_root, tmp_path / 'run', fold=None, iterations=80, batch_size=2, optimizer='adamw', lr=3e-3,
              warmup=10, checkpoint_every=1000, log_every=10, augment=dict(scale_range=(0.9, 1.1)), **FAST)
    after = validate(r['model'], src, src.ids)
    after_tta = validate(r['model'], src, src.ids, tta=True)
    after_held = validate(r['model'], held, held.ids)
    print(f"score before {before:.4f}, after 80 iterations {after:.4f} (flip TTA {after_tta:.4f}); held-out images "
          f"{before_held:.4f} -> {after_held:.4f}; {r['log'].sec_per_iter.mean():.2f} s/iteration")
    assert after >= before + 0.05, (before, after)
    assert after_held >= before_held + 0.05, (before_held, after_held)
    assert after_tta >= before + 0.05, (before, after_tta)
    assert r['log'].loss.iloc[-1] < 0.7 * r['log'].loss.iloc[0]
    # the checkpoint rebuilds the same model, and predict gives scores and labels
    m = load_model(r['checkpoint'])
    p = predict(m, [src.image(src.ids[0])], postprocess=True)[0]
    assert p.scores is not None and p.labels is not None and len(p) > 0
    assert p.meta['cell_type'] == 'shsy5y'


def test_corrupt_image_names_the_file(shsy5y_root, tmp_path):
    import shutil
    root = tmp_path / 'comp'; shutil.copytree(shsy5y_root, root)
    src = SartoriusData(root)
    bad = src.ids[1]
    p = root / 'train' / f'{bad}.png'; p.write_bytes(p.read_bytes()[:60])          # truncated PNG
    with pytest.raises(ValueError, match=bad):
        train(root, tmp_path / 'run', fold=None, iterations=2, batch_size=4, augment=False, **FAST)


def test_images_without_cells(tmp_path):
    img = np.full((64, 64), 128, np.uint8)
    empty = Instances.empty((64, 64), labels=True)
    # a training set without any cell is an error ...
    with pytest.raises(ValueError, match='no annotated cells'):
        train((ArraySource([img, img], [empty, empty], class_names=['cell']), None), tmp_path / 'run', iterations=1, **FAST)
    # ... but an image without cells inside a training set is a valid negative: finite losses, gradients flow
    torch.manual_seed(0)
    m = build_model(3, 'resnet18', **TINY).train()
    x, t = CellDataset(ArraySource([img], [empty]), augment=False)[(0, 0, 0)]
    assert t['boxes'].shape == (0, 4)
    losses = m([x], [t])
    loss = sum(losses.values()); loss.backward()
    assert torch.isfinite(loss) and losses['loss_mask'] == 0
    # and predicting on it gives an Instances (possibly empty) of the right shape, never an error
    p = predict(m, img)[0]
    assert p.shape == (64, 64) and p.scores is not None


def test_wrong_architecture_weights(tmp_path):
    torch.manual_seed(0)
    m34 = build_model(3, 'resnet34', **TINY)
    torch.save({'model': m34.state_dict(), 'config': m34.config}, tmp_path / 'r34.pt')
    with pytest.raises(ValueError, match='does not fit this model'):
        build_model(3, 'resnet18', weights=tmp_path / 'r34.pt', **TINY)
    with pytest.raises(ValueError, match='does not fit this model'):
        train((ArraySource([np.zeros((64, 64), np.uint8)], [Instances.from_masks(np.ones((1, 64, 64), bool))],
                           class_names=CELL_TYPES), None),
              tmp_path / 'run', weights=tmp_path / 'r34.pt', iterations=1, **FAST)
    with pytest.raises(FileNotFoundError, match='not found'):
        build_model(3, 'resnet18', weights=tmp_path / 'missing.pt', **TINY)
    torch.save({'a': [1, 2]}, tmp_path / 'odd.pt')
    with pytest.raises(ValueError, match='no state dict'):
        build_model(3, 'resnet18', weights=tmp_path / 'odd.pt', **TINY)
    # same architecture with 8 classes -> only the class heads are re-initialized
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m8 = build_model(8, 'resnet34', weights=tmp_path / 'r34.pt', **TINY)
    assert torch.equal(m8.backbone.body.layer1[0].conv1.weight, m34.backbone.body.layer1[0].conv1.weight)
    assert m8.roi_heads.box_predictor.cls_score.out_features == 9


def test_bad_images_to_predict():
    m = build_model(3, 'resnet18', **TINY)
    with pytest.raises(ValueError, match='image 1'):
        predict(m, [np.zeros((64, 64), np.uint8), np.zeros((2, 64, 64, 5), np.uint8)])
    with pytest.raises(ValueError, match='image 0'):
        predict(m, [np.full((64, 64), 300.0)])
