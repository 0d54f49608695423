"""Training data from labelled archived instances, prepared exactly as serving prepares them.

Each archived file is read with `tasks.dicom_read.read_instance` and turned into the
canonical image by `tasks.preprocess.preprocess` at the largest input size among the models,
then resized per model with `serving.request_batches.resize_images`, the same steps the
process_incoming flow and the serving client take.

The split into training and validation is by patient: all instances of one patient land on
the same side. Instances without a PatientID form one group per study.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from db.labels import LabelledInstance
from mammo.errors import InputRejected, MammoError
from serving.request_batches import resize_images
from tasks.dicom_read import read_instance
from tasks.preprocess import preprocess

logger = logging.getLogger(__name__)


class InsufficientLabelsError(MammoError, ValueError):
    """The labelled cases cannot make a training and a validation set with both classes."""


@dataclass(frozen=True)
class LabelledImages:
    """Canonical images of labelled instances, in the order of ``instances``."""

    instances: tuple[LabelledInstance, ...]
    #: uint8 [N, size, size], dense tissue bright, chest wall on the left.
    images: np.ndarray
    #: 1 for malignant, 0 otherwise, float32 [N].
    labels: np.ndarray

    @property
    def size(self) -> int:
        return int(self.images.shape[1]) if self.images.size else 0

    def resized(self, size: int) -> np.ndarray:
        """Return the images as uint8 [N, size, size, 1], the model input."""
        return resize_images(self.images, size, size)

    def subset(self, indexes: Sequence[int]) -> LabelledImages:
        index_array = np.asarray(indexes, dtype=np.int64)
        return LabelledImages(tuple(self.instances[i] for i in index_array),
                              self.images[index_array], self.labels[index_array])


def patient_group(instance: LabelledInstance) -> str:
    """Return the split group: the PatientID, or the study for instances without one."""
    if instance.patient_id:
        return f"patient:{instance.patient_id}"
    return f"study:{instance.study_instance_uid}"


def load_labelled_images(instances: Sequence[LabelledInstance], size: int, *,
                         allowed_modalities: tuple[str, ...] = ("MG",),
                         max_pixels: int = 80_000_000) -> LabelledImages:
    """Read and preprocess every labelled instance at ``size`` pixels.

    Files that are missing or fail the reading checks are skipped with a warning, because
    one lost file must not stop retraining.
    """
    kept: list[LabelledInstance] = []
    images: list[np.ndarray] = []
    for instance in instances:
        path = Path(instance.archive_path)
        try:
            dicom = read_instance(path, allowed_modalities=allowed_modalities,
                                  max_pixels=max_pixels)
            images.append(preprocess(dicom, size))
        except (InputRejected, OSError) as error:
            logger.warning("Skipping labelled instance %s: %s", instance.sop_instance_uid,
                           error)
            continue
        kept.append(instance)
    logger.info("Prepared %d of %d labelled instances at %d pixels", len(kept),
                len(instances), size)
    labels = np.array([instance.is_malignant for instance in kept], dtype=np.float32)
    stacked = np.stack(images) if images else np.empty((0, size, size), dtype=np.uint8)
    return LabelledImages(tuple(kept), stacked, labels)


def split_by_patient(instances: Sequence[LabelledInstance], validation_fraction: float,
                     seed: int) -> tuple[list[int], list[int]]:
    """Split instance indexes into training and validation, never splitting a patient.

    A patient goes to validation when the SHA-256 of the seed and its group name, read as a
    number in [0, 1), is below ``validation_fraction``. The side of a patient therefore does
    not depend on which other patients are labelled: with the same seed and fraction, a
    version fine-tuned by one run is never validated by a later run on patients it was
    trained on.

    Raises:
        InsufficientLabelsError: if either side lacks malignant or other cases.
    """
    groups: dict[str, list[int]] = {}
    for index, instance in enumerate(instances):
        groups.setdefault(patient_group(instance), []).append(index)

    training: list[int] = []
    validation: list[int] = []
    for name, members in groups.items():
        side = validation if _unit_hash(seed, name) < validation_fraction else training
        side.extend(members)
    training.sort()
    validation.sort()

    for side_name, indexes in (("training", training), ("validation", validation)):
        malignant = sum(instances[i].is_malignant for i in indexes)
        if malignant == 0 or malignant == len(indexes):
            raise InsufficientLabelsError(
                f"the {side_name} set has {malignant} malignant of {len(indexes)} labelled "
                f"instances ({len(groups)} patients in all); both sets need malignant and "
                "other cases. Import labels for more patients, or change the seed or the "
                "validation fraction")
    return training, validation


def _unit_hash(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Return Keras class weights that give both classes the same total weight."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        raise InsufficientLabelsError(f"class weights need both classes, got counts "
                                      f"{counts.tolist()}")
    return {label: float(labels.size / (2 * count)) for label, count in enumerate(counts)}
