"""Data sources carry their class names (label k <-> class_names[k - 1]); training takes the class count and names
from the source, and the model, its checkpoint, its predictions and a bundle's manifest carry them on to
post-processing and the ensemble's vote. An in-memory source without class names is an error, never the
competition's three. Tiny images (64 px) and 2 training iterations: a few seconds on CPU."""
import json
import numpy as np, pytest, torch
from cellseg_nb.instances import Instances
from cellseg_nb.synth import make_competition, synth_image
from cellseg_nb.data import SartoriusData, LiveCellData, Subset, class_names_of
from cellseg_nb.maskrcnn_train import ArraySource, open_source, train, CellDataset
from cellseg_nb.config import get_recipe

torch.set_num_threads(1)

TINY = {**get_recipe('tiny').model.changed_options(), 'min_size': 64, 'max_size': 64, 'rpn_pre_nms_top_n_train': 200,
        'rpn_post_nms_top_n_train': 100, 'rpn_pre_nms_top_n_test': 200, 'rpn_post_nms_top_n_test': 100}
FAST = dict(backbone='resnet18', model_options=TINY, progress=False, iterations=2, batch_size=1, warmup=1, log_every=1,
            optimizer='adamw', lr=1e-3, checkpoint_every=100)
NAMES = ('neuron', 'glia')


def _two_class_images():
    "Two 64 x 64 synthetic images; the first's cells labelled 1, the second's 2."
    out = []
    for k, t in enumerate(['astro', 'cort']):
        img, inst = synth_image(t, 10 + k, (64, 64), level=2.0)
        out.append((img, inst.with_(labels=np.full(len(inst), k + 1, np.int64))))
    return [o[0] for o in out], [o[1] for o in out]


@pytest.fixture(scope='module')
def two_class():
    imgs, insts = _two_class_images()
    assert all(len(i) > 0 for i in insts)
    return ArraySource(imgs, insts, class_names=list(NAMES))


@pytest.fixture(scope='module')
def comp(tmp_path_factory):
    "A synthetic competition folder with every type and a LIVECell folder inside."
    return make_competition(tmp_path_factory.mktemp('cn'), n_images=3, seed=4, image_shape=(64, 64), n_test=0, n_semi=0,
                            livecell=8)


def test_competition_and_livecell_sources_say_their_classes(comp):
    """The competition sources give the three competition types in the fixed order, LIVECell its eight lines; every
    ground-truth label k names the image's type as class_names[k - 1]; open_source hands the same names on."""
    d = SartoriusData(comp)
    lc = LiveCellData(comp, 'train')
    assert d.class_names == ('shsy5y', 'astro', 'cort')
    assert lc.class_names == ('A172', 'BT474', 'BV2', 'Huh7', 'MCF7', 'SHSY5Y', 'SkBr3', 'SKOV3')
    assert Subset(d, d.ids[:1]).class_names == d.class_names and lc.subset(lc.ids[:1]).class_names == lc.class_names
    for src in (d, lc):
        for i in src.ids:
            labels = np.unique(src.instances(i).labels)
            assert [src.class_names[k - 1] for k in labels] == [src.cell_type(i)], (src, i)
    assert open_source(comp, 'competition', fold=None)[4] == ['shsy5y', 'astro', 'cort']
    assert open_source(comp, 'livecell:shsy5y')[4] == list(lc.class_names)       # the classes stay the 8 lines
    assert open_source(Subset(d, d.ids[:2]))[4] == ['shsy5y', 'astro', 'cort']


def test_in_memory_source_needs_its_class_names(two_class, tmp_path):
    """An ArraySource without class names reads and scores, but opening it for training is a ValueError saying what
    to pass (no silent competition default); names must be distinct strings; train and validation must agree."""
    imgs, insts = _two_class_images()
    bare = ArraySource(imgs, insts)
    assert bare.class_names is None and len(CellDataset(bare, augment=False)) == 2
    with pytest.raises(ValueError, match=r"no class_names.*class_names=\['cell'\]"): open_source((bare, None))
    with pytest.raises(ValueError, match='no class_names'): train((bare, None), tmp_path / 'bare', **FAST)
    assert not (tmp_path / 'bare' / 'checkpoint.pt').exists()
    with pytest.raises(ValueError, match='repeat a name'): ArraySource(imgs, insts, class_names=['a', 'a'])
    with pytest.raises(ValueError, match='non-empty list'): ArraySource(imgs, insts, class_names='neuron')
    other = ArraySource(imgs, insts, class_names=['glia', 'neuron'])
    with pytest.raises(ValueError, match='differ from the training source'): open_source((two_class, other))
    src, ids, vsrc, vids, names = open_source((two_class, None))
    assert (src, ids, vsrc, vids, names) == (two_class, ['0', '1'], None, [], list(NAMES))
    from cellseg_nb.pseudo import CombinedSource
    with pytest.raises(ValueError, match='different class_names'): CombinedSource([(two_class, ['0']), (other, ['1'])])


def test_labels_outside_the_classes_and_contradicting_options_fail(tmp_path):
    "A label beyond the source's classes names the image; model options that contradict the data's classes are refused."
    imgs, insts = _two_class_images()
    one = ArraySource(imgs, insts, class_names=['cell'])               # image '1' holds label 2
    with pytest.raises(ValueError, match=r"image id '1': label 2 outside 1\.\.1"):
        train((one, None), tmp_path / 'one', **{**FAST, 'iterations': 4})
    two = ArraySource(imgs, insts, class_names=list(NAMES))
    with pytest.raises(ValueError, match='num_classes=3 but the training data has 2 classes'):
        train((two, None), tmp_path / 'nc', **{**FAST, 'model_options': {**TINY, 'num_classes': 3}})
    with pytest.raises(ValueError, match='class_names .* differ from the training data'):
        train((two, None), tmp_path / 'cn', **{**FAST, 'model_options': {**TINY, 'class_names': ['shsy5y', 'astro']}})


def test_custom_classes_reach_the_model_checkpoint_bundle_and_postprocessing(two_class, tmp_path):
    """Two custom classes: the trained model has 2 classes (+ background) named by the source, the checkpoint and the
    bundle manifest record the names, the bundle's default post-processing is one config per class, predictions
    carry the names and post-processing votes the image's type with them."""
    from cellseg_nb.bundle import write_bundle, read_bundle, load_predictor
    from cellseg_nb.maskrcnn import load_model, predict
    from cellseg_nb.postprocess import postprocess, PostprocessConfig
    r = train((two_class, None), tmp_path / 'run', **FAST)
    m = r['model']
    assert m.config['num_classes'] == 2 and m.config['class_names'] == list(NAMES)
    assert m.roi_heads.box_predictor.cls_score.out_features == 3 and m.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    ck = torch.load(r['checkpoint'], map_location='cpu', weights_only=True)
    assert ck['config']['class_names'] == list(NAMES) and ck['train_config']['dataset'] == 'arrays'
    b = write_bundle(tmp_path / 'b', maskrcnn=r['checkpoint'])
    man = json.loads((b / 'manifest.json').read_text())
    assert man['classes'] == {'maskrcnn': list(NAMES)}
    got = read_bundle(b)
    assert got.classes == {'maskrcnn': list(NAMES)}
    assert list(got.postprocess) == list(NAMES) and all(got.postprocess[n] == PostprocessConfig() for n in NAMES)
    # a post-processing file naming a class no model has is refused, naming the file
    (tmp_path / 'pp.yaml').write_text("huh7:\n  min_area: 10\n")
    with pytest.raises(ValueError, match=r"pp\.yaml: unknown cell type 'huh7'"):
        write_bundle(tmp_path / 'b2', maskrcnn=r['checkpoint'], postprocess=tmp_path / 'pp.yaml')
    (tmp_path / 'pp.yaml').write_text("glia:\n  min_area: 10\n")
    assert read_bundle(write_bundle(tmp_path / 'b3', maskrcnn=r['checkpoint'], postprocess=tmp_path / 'pp.yaml')).postprocess['glia'].min_area == 10
    # predictions say their classes; the vote uses them (checked against the vote computed here)
    model = load_model(r['checkpoint']); model.roi_heads.score_thresh = 0.0
    raw = predict(model, [two_class.image('0')])[0]
    assert raw.meta['classes'] == list(NAMES) and len(raw) > 0
    votes = np.bincount(raw.labels, weights=raw.scores.astype(np.float64))
    out = postprocess(raw)
    assert out.meta['cell_type'] == NAMES[int(np.argmax(votes)) - 1]
    assert out.to_rles() == postprocess(raw, out.meta['cell_type'], PostprocessConfig()).to_rles()
    # ... also after a round trip through a raw predictions CSV, with the bundle's post-processing
    from cellseg_nb.inference import save_predictions, load_predictions, postprocess_all
    back = load_predictions(save_predictions({'0': raw}, tmp_path / 'raw.csv'))['0']
    assert back.meta['classes'] == list(NAMES)
    assert postprocess_all({'0': back}, got.postprocess, warn_empty=False)['0'].meta['cell_type'] == out.meta['cell_type']
    pred = load_predictor(bundle=b, device='cpu')
    pred.model.roi_heads.score_thresh = 0.0
    assert pred(two_class.image('0')).meta['classes'] == list(NAMES)


def test_ensemble_votes_and_relabels_by_each_models_names():
    """Models of different label sets vote an image's type by name, not by label number; the ensemble predictor's
    relabelling uses the candidates' own class ids."""
    from cellseg_nb.ensemble import image_type
    from cellseg_nb.predictors import _labelled
    px = lambda n: Instances.from_rles(['1 2'] * n, (4, 4))
    a = px(1).with_(scores=np.float32([0.4]), labels=np.int64([1]), meta={'classes': ['x', 'y']})        # x: 0.4
    b = px(2).with_(scores=np.float32([0.3, 0.3]), labels=np.int64([1, 1]), meta={'classes': ['y', 'x']})  # y: 0.6
    assert image_type({'a': a, 'b': b}) == 'y'          # by label number (1: 1.0) it would be a's 'x'
    assert image_type({'a': a, 'b': b.with_(meta={'classes': ['x', 'y']})}) == 'x'   # one label set: labels vote
    assert image_type({'a': a.with_(meta={})}) == 'shsy5y'                            # no names: the competition's
    c = px(2).with_(scores=np.float32([0.5, 0.5]), labels=np.int64([1, 2]), meta={'classes': ['x', 'y']})
    assert _labelled(c, 'y').labels.tolist() == [2, 2] and _labelled(c, 'astro').labels.tolist() == [1, 2]
    assert _labelled(c.with_(meta={}), 'astro').labels.tolist() == [2, 2]
    assert class_names_of(ArraySource([], [], class_names=('x',))) == ('x',)
