"""Rejection of images whose scores are not finite."""

from pathlib import Path

import numpy as np

from mammo.errors import ReasonCode
from tasks.intake import ClaimedFile
from tasks.prepare import InstanceInfo, PreparedBatch, ScoredInput
from tasks.record_outcomes import ModelRun
from tasks.score_checks import reject_invalid_scores


def _batch(count: int) -> PreparedBatch:
    batch = PreparedBatch()
    for index in range(count):
        claimed = ClaimedFile(f"claim-{index}", Path(f"/work/claim-{index}__f{index}.dcm"),
                              f"f{index}.dcm")
        info = InstanceInfo(f"1.2.{index}", "1.2", "1.2.9", None, None, None, "L", "CC")
        batch.to_score.append(ScoredInput(claimed, f"hash{index}", info))
        batch.images.append(np.full((4, 4), index, np.uint8))
    return batch


class TestRejectInvalidScores:
    def test_finite_scores_pass_unchanged(self):
        batch = _batch(2)
        runs = {"cnn": ModelRun(1, [0.1, 0.2])}

        assert reject_invalid_scores(batch, runs) == runs
        assert batch.rejections == []

    def test_nan_image_quarantined_and_others_kept_aligned(self):
        batch = _batch(3)
        runs = {"cnn": ModelRun(1, [0.1, float("nan"), 0.3]),
                "vgg19": ModelRun(2, [0.4, 0.5, float("inf")])}

        kept = reject_invalid_scores(batch, runs)

        assert [item.info.sop_instance_uid for item in batch.to_score] == ["1.2.0"]
        assert [int(image[0, 0]) for image in batch.images] == [0]
        assert kept == {"cnn": ModelRun(1, [0.1]), "vgg19": ModelRun(2, [0.4])}
        reasons = {r.sop_instance_uid: r for r in batch.rejections}
        assert set(reasons) == {"1.2.1", "1.2.2"}
        assert reasons["1.2.1"].reason is ReasonCode.INVALID_SCORE
        assert "cnn:1" in reasons["1.2.1"].message
        assert "vgg19:2" in reasons["1.2.2"].message
