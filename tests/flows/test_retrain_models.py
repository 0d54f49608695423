"""The retraining flow end to end, against real PostgreSQL, TensorFlow and gRPC.

process_incoming scores and archives the instances, and labels come in through the CSV
import. The flow fine-tunes the real CNN from its served version and publishes it through the
model repository. The local gRPC server then picks the new version up, and the next
process_incoming run records it. Models are 64 pixels and train two epochs to stay short.

The mammograms are synthetic: a bright half-disc for the breast and, in malignant breasts, a
small very bright disc. The models learn little from them in two epochs; the tests check the
path and the decisions, not the accuracy.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import select

from db.engine import make_engine, make_session_factory
from db.labels import LabelledInstance, import_labels, read_label_file
from db.schema import (
    EnsembleConfiguration,
    ModelCandidate,
    ModelScore,
    ModelVersion,
    RetrainingRun,
    SecondOpinion,
)
from flows.retrain_parameters import RetrainParameters
from mammo.settings import MODEL_NAMES, Settings
from tasks.training_data import InsufficientLabelsError, split_by_patient
from tests.flows.flow_environment import served_flow_settings
from tests.tasks.mammogram_files import make_breast_pixels, make_dataset, write_dataset

PATIENTS = 12
SERVE_TIMEOUT_SECONDS = 60
TINY = {"models": ["cnn"], "epochs": 2, "batch_size": 8, "bootstrap_samples": 200,
        "min_new_labels": 1}


@pytest.fixture
def retrain_settings(tmp_path, monkeypatch, model_repository, fresh_postgres_url) -> Settings:
    """Settings with a private copy of the version-1 repository, served by a local server.

    The copy keeps the session's repository at version 1 for the other flow tests.
    """
    repository = tmp_path / "models"
    shutil.copytree(model_repository, repository)
    with served_flow_settings(monkeypatch, {
        "MAMMO_DATA_DIR": str(tmp_path / "data"),
        "MAMMO_MODEL_REPOSITORY": str(repository),
        "MAMMO_DATABASE_URL": fresh_postgres_url,
        "MAMMO_STABILITY_SECONDS": "0",
        "MAMMO_SERVING_POLL_SECONDS": "0.5",
        "MAMMO_TARGET_SENSITIVITY": "0.8",
    }) as settings:
        yield settings


def _pixels(malignant: bool, generator: np.random.Generator) -> np.ndarray:
    pixels = make_breast_pixels().astype(np.int32)
    pixels += generator.integers(0, 200, pixels.shape)
    if malignant:
        rows, columns = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
        centre_row = generator.integers(110, 190)
        centre_column = generator.integers(20, 80)
        lesion = np.hypot(rows - centre_row, columns - centre_column) < 14
        pixels[lesion] = 4000
    return np.clip(pixels, 0, 4095).astype(np.uint16)


def _write_exams(folder: Path, patients: range, malignant: set[int], seed: int) -> list[dict]:
    """Write one exam (left and right breast) per patient; return one entry per image."""
    generator = np.random.default_rng(seed)
    written = []
    for patient in patients:
        study = generate_uid()
        for laterality in ("L", "R"):
            is_malignant = patient in malignant and laterality == "L"
            dataset = make_dataset(_pixels(is_malignant, generator), StudyInstanceUID=study,
                                   PatientID=f"PAT-{patient:03d}", Laterality=laterality,
                                   AccessionNumber=f"ACC{patient:03d}")
            write_dataset(folder / f"p{patient:03d}_{laterality}.dcm", dataset)
            written.append({"sop": dataset.SOPInstanceUID, "study": study,
                            "laterality": laterality, "patient": f"PAT-{patient:03d}",
                            "malignant": is_malignant})
    return written


def _import_csv(settings: Settings, tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("SOPInstanceUID,StudyInstanceUID,laterality,label,source,date\n"
                    + "\n".join(lines) + "\n")
    rows, rejected = read_label_file(path)
    assert rejected == []
    factory = make_session_factory(make_engine(settings.resolved_database_url()))
    with factory.begin() as session:
        result = import_labels(session, rows)
    assert result.rejected == []
    factory.kw["bind"].dispose()


def _seed_with_both_classes(images: list[dict]) -> int:
    """Return the first split seed that gives both sides malignant and other cases."""
    instances = [LabelledInstance(image["sop"], image["study"], image["patient"],
                                  image["laterality"], "", "malignant" if image["malignant"]
                                  else "normal") for image in images]
    for seed in range(200):
        try:
            split_by_patient(instances, 0.3, seed)
        except InsufficientLabelsError:
            continue
        return seed
    raise AssertionError("no seed in 0..199 splits these labels with both classes per side")


def _wait_until_served(settings: Settings, name: str, version: int) -> None:
    from serving.client import ServingClient

    deadline = time.monotonic() + SERVE_TIMEOUT_SECONDS
    served = None
    while time.monotonic() < deadline:
        with ServingClient(settings) as client:
            served = client.check_models()
        if served[name].version == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} version {version} not served after "
                         f"{SERVE_TIMEOUT_SECONDS} s; served: {served}")


@pytest.mark.usefixtures("prefect_harness")
class TestRetrainModels:
    def test_promotes_and_serves_candidate(self, retrain_settings, tmp_path):
        from flows.process_incoming import process_incoming
        from flows.retrain_models import ROC_CURVE_FILE, retrain_models
        from models.repository import ModelRepository

        settings = retrain_settings
        images = _write_exams(settings.incoming_dir, range(PATIENTS), set(range(0, PATIENTS, 2)),
                              seed=1)
        assert process_incoming()["scored"] == 2 * PATIENTS
        # Odd patients are labelled per breast, even ones per image.
        lines = []
        for image in images:
            label = "malignant" if image["malignant"] else "normal"
            if int(image["patient"][-3:]) % 2:
                lines.append(f",{image['study']},{image['laterality']},{label},follow-up,"
                             "2026-11-01")
            else:
                lines.append(f"{image['sop']},,,{label},biopsy,2026-11-02")
        _import_csv(settings, tmp_path, lines)
        seed = _seed_with_both_classes(images)

        result = retrain_models(parameters=RetrainParameters(
            **TINY, promotion_margin=0.5, validation_fraction=0.3, seed=seed))

        assert result["status"] == "completed"
        assert result["labelled_instances"] == 2 * PATIENTS
        cnn = result["models"]["cnn"]
        assert cnn["decision"] == "promoted"
        assert cnn["published_version"] == 2
        repository = ModelRepository(settings.model_repository)
        assert repository.versions("cnn") == [1, 2]
        assert repository.versions("vgg19") == [1]
        metadata = repository.version_metadata("cnn", 2)
        assert metadata["base_version"] == 1
        assert metadata["threshold"] == pytest.approx(cnn["threshold"])
        assert (settings.model_repository / "cnn" / "2" / "assets.extra" / ROC_CURVE_FILE
                ).stat().st_size > 0

        engine = make_engine(settings.resolved_database_url())
        factory = make_session_factory(engine)
        with factory() as session:
            [run] = session.scalars(select(RetrainingRun)).all()
            [candidate] = session.scalars(select(ModelCandidate)).all()
            version = session.get(ModelVersion, ("cnn", 2))
            [ensemble] = session.scalars(select(EnsembleConfiguration)).all()
        assert run.status == "completed"
        assert run.new_labels == 2 * PATIENTS
        assert candidate.decision == "promoted"
        assert candidate.published_version == 2
        assert Path(candidate.checkpoint_path).suffix == ".keras"
        assert Path(candidate.checkpoint_path).is_file()
        for side in ("candidate", "current"):
            metrics = candidate.metrics[side]
            assert metrics["auc_ci_low"] <= metrics["auc"] <= metrics["auc_ci_high"]
            assert 0 <= metrics["operating"]["sensitivity"] <= 1
            assert metrics["chosen"]["sensitivity"] >= 0.8
        assert version is not None
        assert version.threshold == pytest.approx(cnn["threshold"])
        assert ensemble.model_versions == "cnn:2,efficientnetb7:1,resnet50:1,vgg19:1"
        assert sum(ensemble.weights.values()) == pytest.approx(1.0, abs=1e-3)

        # The local server polls the repository and serves version 2; the next run uses it
        # with the stored ensemble weights and threshold.
        _wait_until_served(settings, "cnn", 2)
        new_images = _write_exams(settings.incoming_dir, range(100, 101), set(), seed=2)
        assert process_incoming()["scored"] == 2
        new_uids = [image["sop"] for image in new_images]
        with factory() as session:
            scores = session.scalars(select(ModelScore).where(
                ModelScore.sop_instance_uid.in_(new_uids))).all()
            opinions = session.scalars(select(SecondOpinion).where(
                SecondOpinion.sop_instance_uid.in_(new_uids))).all()
        assert {score.model_version for score in scores if score.model_name == "cnn"} == {2}
        assert len(opinions) == 2
        for opinion in opinions:
            assert opinion.threshold == pytest.approx(ensemble.threshold)
        assert {opinion.model_versions for opinion in opinions} == {ensemble.model_versions}

        # No label arrived since this run, so the next one is skipped.
        again = retrain_models(parameters=RetrainParameters(**TINY))
        assert again["status"] == "skipped"
        assert repository.versions("cnn") == [1, 2]
        engine.dispose()

    def test_worse_candidate_recorded_not_published(self, retrain_settings, tmp_path):
        from flows.process_incoming import process_incoming
        from flows.retrain_models import retrain_models
        from models.repository import ModelRepository

        settings = retrain_settings
        images = _write_exams(settings.incoming_dir, range(PATIENTS), set(), seed=3)
        assert process_incoming()["scored"] == 2 * PATIENTS

        # The labels follow the served CNN's own scores, so version 1 ranks the held-out
        # cases perfectly (AUC 1). A learning rate of 1.0 then wrecks the candidate.
        engine = make_engine(settings.resolved_database_url())
        factory = make_session_factory(engine)
        with factory() as session:
            scores = {score.sop_instance_uid: score.probability for score in session.scalars(
                select(ModelScore).where(ModelScore.model_name == "cnn"))}
        median = float(np.median(list(scores.values())))
        for image in images:
            image["malignant"] = scores[image["sop"]] > median
        _import_csv(settings, tmp_path, [
            f"{image['sop']},,,{'malignant' if image['malignant'] else 'benign'},biopsy,"
            "2026-11-03" for image in images])
        seed = _seed_with_both_classes(images)

        result = retrain_models(parameters=RetrainParameters(
            **{**TINY, "learning_rate": 1.0}, promotion_margin=0.0, validation_fraction=0.3,
            seed=seed))

        cnn = result["models"]["cnn"]
        assert result["status"] == "completed"
        assert cnn["current_auc"] == pytest.approx(1.0)
        assert cnn["auc"] < 1.0
        assert cnn["decision"] == "rejected"
        assert cnn["published_version"] is None
        assert ModelRepository(settings.model_repository).versions("cnn") == [1]
        with factory() as session:
            [candidate] = session.scalars(select(ModelCandidate)).all()
            version_two = session.get(ModelVersion, ("cnn", 2))
            [ensemble] = session.scalars(select(EnsembleConfiguration)).all()
        assert candidate.decision == "rejected"
        assert candidate.published_version is None
        assert candidate.metrics["candidate"]["auc"] == pytest.approx(cnn["auc"])
        assert "more than 0.000 below" in candidate.reason
        assert Path(candidate.roc_curve_path).is_file()
        assert version_two is None
        assert ensemble.model_versions == ",".join(f"{name}:1" for name in MODEL_NAMES)

        # A dry run trains and records its candidate but publishes nothing and keeps the
        # stored ensemble.
        dry = retrain_models(parameters=RetrainParameters(
            **{**TINY, "epochs": 1, "min_new_labels": 0}, dry_run=True,
            validation_fraction=0.3, seed=seed))

        assert dry["models"]["cnn"]["decision"] == "dry_run"
        assert ModelRepository(settings.model_repository).versions("cnn") == [1]
        with factory() as session:
            dry_run = session.get(RetrainingRun, dry["flow_run_id"])
            dry_candidate = session.get(ModelCandidate, (dry["flow_run_id"], "cnn"))
            ensembles = session.scalars(select(EnsembleConfiguration)).all()
        assert dry_run.dry_run is True
        assert dry_run.status == "completed"
        assert dry_candidate.decision == "dry_run"
        assert dry_candidate.published_version is None
        assert len(ensembles) == 1
        engine.dispose()

    def test_invalid_parameters_fail_before_writing(self, retrain_settings):
        from prefect.exceptions import ParameterTypeError

        from flows.retrain_models import retrain_models

        with pytest.raises(ParameterTypeError):
            retrain_models(parameters={"epochs": 0})

        engine = make_engine(retrain_settings.resolved_database_url())
        with make_session_factory(engine)() as session:
            assert session.scalars(select(RetrainingRun)).all() == []
        engine.dispose()


class TestRetrainDeployment:
    def test_serve_has_weekly_cron(self):
        from deployments.serve import retrain_deployment

        deployment = retrain_deployment(Settings(retrain_cron="30 3 * * 1",
                                                 retrain_timezone="Europe/Istanbul"))

        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "30 3 * * 1"
        assert schedule.schedule.timezone == "Europe/Istanbul"
        assert deployment.concurrency_limit == 1

    def test_prefect_yaml_has_weekly_cron(self):
        path = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"
        deployments = {entry["name"]: entry for entry in yaml.safe_load(path.read_text())
                       ["deployments"]}

        retrain = deployments["retrain-models"]
        assert retrain["entrypoint"] == "flows/retrain_models.py:retrain_models"
        assert retrain["schedules"] == [{"cron": "0 2 * * 0", "timezone": "UTC"}]
        assert retrain["concurrency_limit"] == 1
