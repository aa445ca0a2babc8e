"""One settings path from the command line to the checkpoint: flags and `--set` are one override mechanism (a
`train.*` setting reaches the LIVECell stage either way), `--fold -1` (all images) is told apart from "not given",
and a checkpoint written before a settings field existed still resumes (the missing field reads as its default)."""
import dataclasses
import pytest
import torch
from cellseg_nb.cli import resolve_recipe, override_stages, given
from cellseg_nb.config import get_recipe, TrainConfig
from cellseg_nb.synth import make_competition
from cellseg_nb.maskrcnn_train import train, save_checkpoint, Hook
from cellseg_nb.maskrcnn import read_checkpoint


def test_flag_and_set_spellings_train_the_same_run():
    assert get_recipe('competition').pretrain is not None
    by_flag = resolve_recipe('competition', {'train.lr': 0.0123, 'train.warmup': 7})
    by_set = resolve_recipe('competition', None, ['train.lr=0.0123', 'train.warmup=7'])
    assert by_flag == by_set
    assert (by_set.train.lr, by_set.pretrain.lr, by_set.pretrain.warmup) == (0.0123, 0.0123, 7)
    # iterations stay per stage; an explicit pretrain setting wins, whichever spelling names it
    r = resolve_recipe('competition', {'train.iterations': 5, 'train.lr': 0.01}, ['pretrain.lr=0.002'])
    assert (r.train.iterations, r.pretrain.iterations) == (5, get_recipe('competition').pretrain.iterations)
    assert (r.train.lr, r.pretrain.lr) == (0.01, 0.002)
    r = resolve_recipe('competition', None, ['pretrain.lr=0.002', 'train.lr=0.01'])
    assert (r.train.lr, r.pretrain.lr) == (0.01, 0.002)
    # --set comes after the flags
    assert resolve_recipe('competition', {'train.lr': 0.01}, ['train.lr=0.03']).pretrain.lr == 0.03
    # a recipe without a LIVECell stage gets none
    tiny = get_recipe('tiny')
    assert tiny.pretrain is None and resolve_recipe('tiny', None, ['train.lr=0.01']).pretrain is None


def test_all_images_is_not_the_same_as_not_given():
    assert TrainConfig().fold is not None
    assert resolve_recipe('default', {}).train.fold == TrainConfig().fold                  # not given: the recipe's
    assert resolve_recipe('default', {'train.fold': None}).train.fold is None              # --fold -1: every image
    assert given({'train.lr': None, 'train.fold': 0, 'model.scale': 1.5}) == {'train.fold': 0, 'model.scale': 1.5}
    r = get_recipe('default')
    assert override_stages(r, {}) is r


class Stop(Exception): pass


class StopAfter(Hook):
    "Stops the run after step `n` (before the checkpoint hook of that step runs)."
    def __init__(self, n): self.n = n
    def after_step(self, t):
        if t.iteration == self.n: raise Stop


def test_checkpoint_older_than_a_settings_field_still_resumes(tmp_path):
    from cellseg_nb.config import ModelConfig
    torch.set_num_threads(1)
    root = make_competition(tmp_path / 'data', n_images=6, seed=3, image_shape=(96, 96), n_test=0, n_semi=0)
    tiny = get_recipe('tiny')
    opts = tiny.model.build_options()                 # what the command line passes: every model setting
    same = [k for k, v in ModelConfig().build_options().items() if opts[k] == v and k != 'class_names']
    assert same, 'no model setting at its default to drop'
    run = dict(backbone='resnet18', model_options=opts, progress=False, fold=None, iterations=3, checkpoint_every=1,
               val_every=10 ** 6, batch_size=1, optimizer='adamw', lr=1e-3, warmup=1,
               augment=dataclasses.asdict(tiny.augment))
    out = tmp_path / 'run'
    with pytest.raises(Stop):                          # stopped after step 2 of 3, its checkpoint at step 1
        train(root, out, hooks=[StopAfter(2)], **run)
    # the checkpoint as an older version wrote it, before three settings existed (the run uses their defaults)
    ck = read_checkpoint(out / 'checkpoint.pt')
    cfg = ck['train_config']
    assert cfg['clip_grad'] == TrainConfig().clip_grad and cfg['augment']['flip'] == tiny.augment.flip
    del cfg['clip_grad'], cfg['augment']['flip'], cfg['model_options'][same[0]]
    save_checkpoint(out / 'checkpoint.pt', ck)
    assert ck['iteration'] == 1
    res = train(root, out, resume=True, **run)
    assert read_checkpoint(res['checkpoint'])['iteration'] == 3
    # a setting that really differs is still refused, naming it
    with pytest.raises(ValueError, match="'lr'"):
        train(root, out, resume=True, **{**run, 'lr': 5e-3})


def test_a_recipe_alone_trains_its_settings_and_keywords_win(tmp_path):
    "`train(root, out, recipe=r)` trains r's settings (they were ignored unless also passed as keywords); a keyword wins."
    torch.set_num_threads(1)
    root = make_competition(tmp_path / 'data', n_images=4, seed=3, image_shape=(96, 96), n_test=0, n_semi=0)
    r = get_recipe('tiny')
    r = r.replace(train=r.train.replace(iterations=2, lr=3e-4, warmup=1, checkpoint_every=1, val_every=10 ** 6, fold=None))
    res = train(root, tmp_path / 'a', recipe=r, progress=False)
    cfg = read_checkpoint(res['checkpoint'])['train_config']
    for k in ('iterations', 'lr', 'warmup', 'batch_size', 'optimizer', 'checkpoint_every'):
        assert cfg[k] == getattr(r.train, k), k
    assert cfg['backbone'] == r.model.backbone == 'resnet18'
    assert cfg['model_options']['fpn_channels'] == r.model.fpn_channels != get_recipe('default').model.fpn_channels
    res = train(root, tmp_path / 'b', recipe=r, progress=False, lr=1e-4)
    assert read_checkpoint(res['checkpoint'])['train_config']['lr'] == 1e-4
