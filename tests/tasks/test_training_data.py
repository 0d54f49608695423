"""Patient-level split and class weights of the retraining data."""

from __future__ import annotations

import pytest

from db.labels import LabelledInstance
from tasks.training_data import (
    InsufficientLabelsError,
    class_weights,
    patient_group,
    split_by_patient,
)


def _instances(patients: int, images_per_patient: int = 2) -> list[LabelledInstance]:
    return [
        LabelledInstance(f"1.2.{patient}.{image}", f"1.3.{patient}", f"P{patient}",
                         "L" if image % 2 else "R", f"/archive/{patient}/{image}.dcm",
                         "malignant" if patient % 3 == 0 and image == 0 else "benign")
        for patient in range(patients) for image in range(images_per_patient)
    ]


class TestSplitByPatient:
    def test_patient_never_on_both_sides(self):
        instances = _instances(40)

        training, validation = split_by_patient(instances, 0.25, seed=0)

        training_patients = {instances[i].patient_id for i in training}
        validation_patients = {instances[i].patient_id for i in validation}
        assert not training_patients & validation_patients
        assert sorted(training + validation) == list(range(len(instances)))
        assert 0.1 < len(validation) / len(instances) < 0.4

    def test_side_stable_when_patients_added(self):
        fewer = _instances(40)
        more = _instances(80)

        _, validation_fewer = split_by_patient(fewer, 0.25, seed=3)
        _, validation_more = split_by_patient(more, 0.25, seed=3)

        before = {fewer[i].patient_id for i in validation_fewer}
        after = {more[i].patient_id for i in validation_more}
        assert before == {patient for patient in after if int(patient[1:]) < 40}

    def test_missing_patient_id_groups_by_study(self):
        instance = LabelledInstance("1.2.1", "1.3.9", None, "L", "/a.dcm", "normal")

        assert patient_group(instance) == "study:1.3.9"

    def test_one_class_side_raises(self):
        instances = [LabelledInstance(f"1.2.{i}", f"1.3.{i}", f"P{i}", "L", "/a.dcm",
                                      "benign") for i in range(10)]

        with pytest.raises(InsufficientLabelsError, match="0 malignant"):
            split_by_patient(instances, 0.3, seed=0)


class TestClassWeights:
    def test_balanced_totals(self):
        labels = [0, 0, 0, 1]

        weights = class_weights(labels)

        assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
        assert 3 * weights[0] == pytest.approx(1 * weights[1])

    def test_one_class_raises(self):
        with pytest.raises(InsufficientLabelsError):
            class_weights([1, 1])
