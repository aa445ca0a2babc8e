"Typed configs and named recipes: YAML round trips, unknown keys, dotted overrides, type checks, old files."
import json
import pytest
from cellseg_nb.config import (Recipe, ModelConfig, TrainConfig, AugmentConfig, CellposeConfig, DemoConfig, RECIPES,
                               get_recipe, ConfigError, ConfigTypeError, small_model)
from cellseg_nb.postprocess import PostprocessConfigs
from cellseg_nb.ensemble import EnsembleSettings


@pytest.mark.parametrize('name', list(RECIPES))
def test_recipe_yaml_roundtrip(tmp_path, name):
    r = get_recipe(name)
    p = r.save(tmp_path / f'{name}.yaml')
    assert Recipe.load(p) == r and get_recipe(p) == r
    assert list(tmp_path.iterdir()) == [p]                    # written through a temporary name, nothing left
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r      # plain JSON values carry everything


def test_recipe_with_postprocess_and_ensemble_roundtrip(tmp_path):
    pp = PostprocessConfigs().replace('astro', min_area=120, nms_iou=None)
    ens = EnsembleSettings(['maskrcnn', 'cellpose'], {'shsy5y': 'both', 'astro': 'cellpose', 'cort': 'maskrcnn'},
                           weights={'shsy5y': {'maskrcnn': 0.3, 'cellpose': 0.7}}, vote={'shsy5y': 0.4}, postprocess=pp)
    r = get_recipe('demo').replace(postprocess=pp, ensemble=ens)
    back = Recipe.load(r.save(tmp_path / 'r.yaml'))
    assert back.postprocess == pp and back.ensemble.to_dict() == ens.to_dict()
    m = back.merge('postprocess.shsy5y.min_area=60', 'ensemble.iou_threshold=0.4')
    assert m.postprocess['shsy5y'].min_area == 60 and m.postprocess['astro'] == pp['astro'] and m.ensemble.iou_threshold == 0.4


def test_unknown_keys_are_refused_with_key_and_file(tmp_path):
    p = tmp_path / 'r.yaml'
    for text, key in [('train: {lr: 0.01, lrate: 2}\n', "'train.lrate'"), ('modle: {}\n', "'modle'"),
                      ('cellpose: {epochs: 3, bsise: 4}\n', "'cellpose.bsise'")]:
        p.write_text(text)
        with pytest.raises(ConfigError) as e: Recipe.load(p)
        assert key in str(e.value) and str(p) in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match='unknown recipe'): get_recipe('nope')


def test_dotted_overrides_parse_yaml_and_check_types():
    r = get_recipe('tiny')
    m = r.merge('train.lr=1e-3', 'model.backbone=resnet34', 'model.anchor_sizes=[4, 8, 16, 32, 64]',
                'train.val_images=null', 'augment.crop_size=[64, 64]', {'train.iterations': 7})
    assert (m.train.lr, m.model.backbone, m.model.anchor_sizes) == (0.001, 'resnet34', (4, 8, 16, 32, 64))
    assert (m.train.val_images, m.augment.crop_size, m.train.iterations) == (None, (64, 64), 7)
    assert r.train.lr == 2e-3                                  # merge returns a copy
    assert r.merge('pretrain.iterations=5').pretrain.iterations == 5     # a group that was None is created
    for o, msg in [('train.lr=fast', "train.lr: expected float, got 'fast'"),
                   ('train.iterations=2.5', 'train.iterations: expected int'),
                   ('train.augment=maybe', 'train.augment: expected bool'),
                   ('model.mask_size=42', 'model.mask_size: expected one of [28, 56]'),
                   ('augment.crop_size=[64]', 'augment.crop_size'),
                   ('train.lr.x=1', 'train.lr is a single setting'),
                   ('train=3', 'train: expected TrainConfig, got 3'),
                   ('train.lr', 'expected KEY=VALUE')]:
        with pytest.raises(ConfigError) as e: r.merge(o)
        assert msg in str(e.value), (o, str(e.value))
    with pytest.raises(TypeError): r.merge('train.lr=fast')    # wrong types are TypeErrors too


def test_named_recipes_hold_todays_demo_numbers():
    d = get_recipe('demo')
    assert (d.demo.n_images, d.demo.image_shape, d.demo.n_folds, d.demo.seed, d.demo.tta) == (48, (160, 160), 5, 0, False)
    assert (d.train.iterations, d.model.backbone, d.model.scale, d.model.mask_size, d.train.warmup) == (440, 'resnet18', 1.0, 28, 20)
    assert (d.cellpose.epochs, d.cellpose.size_epochs, d.cellpose.bsize, d.cellpose.nimg_per_epoch,
            d.cellpose.diam_mean, d.cellpose.learning_rate, d.cellpose.batch_size) == (60, 5, 96, 16, 17.0, 0.005, 8)
    assert (d.train.optimizer, d.train.lr, d.train.batch_size) == ('adamw', 2e-3, 2)
    assert d.model == small_model((160, 160))
    q = get_recipe('quick')
    assert (q.demo.n_images, q.demo.image_shape, q.demo.n_folds, q.train.iterations, q.cellpose.epochs,
            q.cellpose.size_epochs) == (12, (96, 96), 3, 2, 1, 1)
    c = get_recipe('competition')
    assert c.model.backbone == 'resnet50' and c.pretrain is not None and c.model.detections_per_img >= 1000


def test_old_postprocess_and_ensemble_files_still_load(tmp_path):
    (tmp_path / 'pp.yaml').write_text('shsy5y:\n  score_threshold: 0.2\n  min_area: 60\n  nms_iou: null\n')
    assert PostprocessConfigs.load(tmp_path / 'pp.yaml')['shsy5y'].nms_iou is None
    old = {'models': ['maskrcnn', 'cellpose'], 'choice': {'cort': 'both'}, 'weights': {'cort': {'maskrcnn': 0.5, 'cellpose': 0.5}},
           'vote': {'cort': 0.5}, 'iou_threshold': 0.5, 'postprocess': {'cort': {'min_area': 70}}}
    (tmp_path / 'e.json').write_text(json.dumps(old, indent=1))           # as the JSON writer of earlier versions
    e = EnsembleSettings.load(tmp_path / 'e.json')
    assert e.to_dict()['postprocess']['cort']['min_area'] == 70 and e.choice == {'cort': 'both'}
    e.save(tmp_path / 'e2.json')
    assert json.loads((tmp_path / 'e2.json').read_text()) == e.to_dict()      # still JSON for a .json name
    (tmp_path / 'e3.json').write_text(json.dumps({**old, 'iou': 0.3}))
    with pytest.raises(ConfigError, match="e3.json: unknown key 'iou'"): EnsembleSettings.load(tmp_path / 'e3.json')


def test_model_options_build_a_model():
    from cellseg_nb.maskrcnn import build_model
    r = get_recipe('tiny')
    o = r.maskrcnn_options()
    m = build_model(3, o['backbone'], **o['model_options'])
    assert all(m.config[k] == v for k, v in o['model_options'].items() if k not in ('norm', 'class_names'))
    assert o['augment'] == r.augment.to_dict() | {'scale_range': (0.8, 1.25)} and o['iterations'] == 10
    assert r.merge('train.augment=false').maskrcnn_options()['augment'] is False


@pytest.mark.parametrize('name', list(RECIPES))
def test_every_recipe_builds_its_model_and_augments(name):
    "Each named recipe's settings are accepted by the code that uses them: build_model, augment_sample, lr_at."
    import numpy as np, torch
    from cellseg_nb.maskrcnn import build_model
    from cellseg_nb.maskrcnn_train import augment_sample, lr_at, TRAIN_DEFAULTS
    from cellseg_nb.instances import Instances
    r = get_recipe(name)
    o = r.maskrcnn_options()
    torch.manual_seed(0)
    m = build_model(3, o['backbone'], **o['model_options'])
    assert m.config['scale'] == r.model.scale and tuple(m.config['anchor_sizes']) == r.model.anchor_sizes
    masks = np.zeros((3, 64, 80), bool); masks[0, 5:20, 5:25] = masks[1, 30:50, 40:60] = masks[2, 40:60, 2:12] = True
    img = np.where(masks.any(0), 60, 180).astype(np.uint8)
    a = o['augment']
    out, inst = augment_sample(img, Instances.from_masks(masks), np.random.default_rng(0), base_scale=r.model.scale, **a)
    if a['crop_size']: assert out.shape == tuple(a['crop_size'])
    assert out.shape == inst.shape and out.dtype == np.uint8
    for stage in ('train', 'pretrain'):
        s = r.stage_options(stage)
        lrs = [lr_at(i, {**TRAIN_DEFAULTS, **s}) for i in range(s['iterations'] + 1)]
        assert max(lrs) <= s['lr'] + 1e-12 and lrs[-1] <= lrs[min(s['warmup'], s['iterations'])]
