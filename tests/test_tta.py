"""Multi-scale test-time augmentation: predictions mapped back to the input's pixel grid exactly (sparse
`resize_instances` against a dense nearest-neighbour resampling), the generic `tta_predict` over flips x scales, and
Mask R-CNN's in-model TTA at several scales of its one `scale` setting."""
import numpy as np, pytest, torch
from cellseg_nb.instances import Instances
from cellseg_nb.postprocess import random_candidates
from cellseg_nb.inference import resize_instances, _nearest_source, tta_predict, predict_images
from cellseg_nb.maskrcnn import build_model, predict, tta_variants

torch.set_num_threads(1)


@pytest.mark.parametrize('seed', range(3))
def test_resize_instances_equals_dense_nearest(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
    cand = random_candidates(int(rng.integers(1, 25)), (h, w), seed=seed)
    cand = cand.with_(scores=rng.random(len(cand)).astype(np.float32), labels=np.arange(len(cand)))
    dense = cand.to_masks()
    for _ in range(4):
        H, W = int(rng.integers(3, 130)), int(rng.integers(3, 130))
        out = resize_instances(cand, (H, W))
        sr, sc = _nearest_source(H, h), _nearest_source(W, w)
        assert out.shape == (H, W)
        np.testing.assert_array_equal(out.to_masks(), dense[:, sr][:, :, sc])
        np.testing.assert_array_equal(out.scores, cand.scores); np.testing.assert_array_equal(out.labels, cand.labels)
    # pixel centres: up by an integer factor and back down is the identity
    k = int(rng.integers(2, 4))
    assert resize_instances(resize_instances(cand, (h * k, w * k)), (h, w)).to_rles() == cand.to_rles()


def test_nearest_source_is_pixel_centres():
    np.testing.assert_array_equal(_nearest_source(4, 2), [0, 0, 1, 1])
    np.testing.assert_array_equal(_nearest_source(2, 4), [1, 3])
    np.testing.assert_array_equal(_nearest_source(5, 5), np.arange(5))


def box_predictor(image):
    "A scale- and flip-equivariant predictor: the box [H/4, H/2) x [W/4, W/2), score 0.9."
    H, W = image.shape
    m = np.zeros((1, H, W), bool); m[0, H // 4:H // 2, W // 4:W // 2] = True
    return Instances.from_masks(m, scores=[0.9], labels=[1])


def test_tta_predict_maps_every_pass_back_exactly():
    img = np.zeros((64, 96), np.uint8)
    seen = []
    def pred(image): seen.append(image.shape); return box_predictor(image)
    out = tta_predict(pred, img, flips=('none',), scales=(0.5, 1.0, 2.0))
    assert seen == [(32, 48), (64, 96), (128, 192)]
    # every pass lands on the 1x box: one cell, full score, the exact mask
    assert len(out) == 1 and out.meta['n_models'].tolist() == [3]
    np.testing.assert_allclose(out.scores, [0.9], rtol=1e-6)
    np.testing.assert_array_equal(out.to_masks(), box_predictor(img).to_masks())
    # flips x scales passes; a pass that finds nothing lowers the fused score by its share (weighted boxes fusion)
    calls = []
    def sometimes(image):
        calls.append(image.shape)
        return box_predictor(image) if image.shape[0] == 64 else Instances.empty(image.shape, scores=True, labels=True)
    out = predict_images(sometimes, {'a': img}, tta=('none', 'h'), tta_scales=(1.0, 1.5), progress=False)['a']
    assert len(calls) == 4 and len(out) == 2              # the box and its mirror image (the box is not symmetric)
    np.testing.assert_allclose(out.scores, [0.9 / 4] * 2, rtol=1e-6)
    with pytest.raises(ValueError, match='scales'): tta_predict(pred, img, scales=())


TINY = dict(fpn_channels=32, mask_head_channels=32, box_head_dim=128, min_size=64, max_size=96,
            rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, anchor_sizes=(16, 32, 64, 128, 256))


def test_maskrcnn_multiscale_tta():
    torch.manual_seed(0)
    m = build_model(3, 'resnet18', **TINY).eval()
    m.roi_heads.score_thresh = 0.0
    img = (np.random.default_rng(1).random((64, 96)) * 255).astype(np.uint8)
    cells = lambda p: sorted(zip(p.to_rles(), p.scores.tolist(), p.labels.tolist()))
    same = lambda a, b: cells(a) == cells(b)
    plain, = predict(m, img)
    # two identical passes fuse to the plain prediction (NMS keeps one of each pair, the mean of equal masks)
    assert same(predict(m, img, tta_scales=(1.0, 1.0))[0], plain)
    # one pass at 2x = the same network run with its `scale` set to 2 (the one setting TTA scales multiply)
    at2, = predict(m, img, tta_scales=(2.0,))
    m.transform.scale = 2.0
    try:
        ref2, = predict(m, img)
        assert same(predict(m, img, tta_scales=(1.0, 1.0))[0], ref2)
    finally: m.transform.scale = 1.0
    assert same(at2, ref2) and at2.shape == img.shape
    # 1x and 2x fused: every kept detection comes from one of the passes, mapped back to the input's grid
    both, = predict(m, img, tta_scales=(1.0, 2.0))
    assert both.shape == img.shape and len(both) > 0
    assert np.isin(both.scores, np.concatenate([plain.scores, ref2.scores])).all()
    assert len(both) <= len(plain) + len(ref2)
    assert tta_variants(True, (1.0, 2.0)) == [(None, 1.0), ('h', 1.0), ('v', 1.0), (None, 2.0), ('h', 2.0), ('v', 2.0)]
    with pytest.raises(ValueError, match='0.25..8'): tta_variants(False, (0.1,))
