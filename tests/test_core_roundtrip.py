"Round trips of the codec and Instances against pycocotools on random masks."
import numpy as np
from pycocotools import mask as mask_util
from cellseg_nb.instances import Instances, iou_matrix


def test_rles_roundtrip_and_coco_iou():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(5, 40, 2)
        m = rng.random((rng.integers(1, 6), h, w)) < 0.4
        inst = Instances.from_masks(m)
        back = Instances.from_rles(inst.to_rles(), (h, w))
        assert np.array_equal(back.to_masks(), m)
        coco = [mask_util.encode(np.asfortranarray(x.astype(np.uint8))) for x in m]
        assert inst.to_coco_rles() == coco
        ref = mask_util.iou(coco, coco, [0] * len(coco))
        assert np.allclose(iou_matrix(inst, inst), ref, atol=1e-12)
