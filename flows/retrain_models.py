"""Retraining: fine-tune the served models on labelled cases and promote the better ones.

Sequence of one run:
1. validate the parameters against the configured models (before anything is read);
2. count the labels imported since the last completed run and stop early when there are
   fewer than ``min_new_labels``;
3. read the labelled archived instances through the serving preprocessing and split them by
   patient into training and validation;
4. smoke check every selected model: a one-step fit, a ``.keras`` save and an export with
   its contract check on a few cases, before the expensive part;
5. per model: fine-tune from the served version and save the ``.keras`` checkpoint. Score
   the candidate and the served version on the same validation cases and choose the
   candidate's threshold for the target sensitivity. Promote the candidate (publish it as
   the next version) only when its AUC is at most ``promotion_margin`` below the served
   version's;
6. choose the ensemble weights and threshold for the versions served after the run;
7. record every candidate, the decisions and the ensemble in the database, and publish the
   metrics table and the decision report as Prefect artifacts.

A dry run does steps 1 to 6 and records the candidates with the decision ``dry_run``, but
publishes no version and stores no ensemble configuration.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from db import labels as label_store
from db import retraining as records
from db.engine import make_engine, make_session_factory
from db.schema import ModelVersion
from db.writes import record_model_versions
from mammo.errors import ConfigurationError
from flows.retrain_parameters import RetrainParameters
from mammo.settings import Settings
from mammo.texts import text
from tasks.preprocess import PREPROCESSING_VERSION
from tasks.training_data import LabelledImages, class_weights, load_labelled_images, \
    split_by_patient

#: Name of the ROC curve image in a run's model folder and in a published version.
ROC_CURVE_FILE = "roc_curve.png"


@dataclass
class ServedVersion:
    """The version a model serves when the run starts."""

    name: str
    version: int
    input_size: int
    export_dir: Path
    metadata: dict[str, Any]
    threshold: float


@dataclass
class ModelOutcome:
    """Decision of a run for one model, with the validation scores behind it."""

    name: str
    base_version: int
    decision: str
    reason: str
    current_scores: np.ndarray
    candidate_scores: np.ndarray | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    published_version: int | None = None
    checkpoint_path: Path | None = None
    roc_curve_path: Path | None = None

    @property
    def final_scores(self) -> np.ndarray:
        """Scores of the version served after the run (the candidate in a dry run)."""
        if self.decision in ("promoted", "dry_run") and self.candidate_scores is not None:
            return self.candidate_scores
        return self.current_scores


# --- Tasks -------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def find_served_versions(settings: Settings, session_factory) -> dict[str, ServedVersion]:
    """Return the latest version of every configured model, the one TF Serving serves."""
    # NOTE: this assumes TF Serving's default version policy (latest). A site that pins a
    # version in models.config gets candidates fine-tuned from, and compared with, the latest.
    from models.repository import ModelRepository

    repository = ModelRepository(settings.model_repository)
    served: dict[str, ServedVersion] = {}
    for name in settings.model_names:
        version = repository.latest_version(name)
        if version is None:
            raise ConfigurationError(
                f"model {name} has no version in {settings.model_repository}; run "
                "`mammo models bootstrap` first")
        metadata = repository.version_metadata(name, version)
        with session_factory() as session:
            row = session.get(ModelVersion, (name, version))
        threshold = row.threshold if row is not None and row.threshold is not None \
            else settings.operating_threshold
        served[name] = ServedVersion(name, version, int(metadata["input_size"]),
                                     repository.model_dir(name) / str(version), metadata,
                                     float(threshold))
    return served


@task(cache_policy=NO_CACHE)
def load_dataset(settings: Settings, instances: list, size: int) -> LabelledImages:
    return load_labelled_images(instances, size, allowed_modalities=settings.allowed_modalities,
                                max_pixels=settings.max_pixels)


@task(cache_policy=NO_CACHE)
def smoke_check_models(names: list[str], served: dict[str, ServedVersion],
                       data: LabelledImages, training: list[int],
                       parameters: RetrainParameters, work_dir: Path) -> None:
    """Fit one step, save, export and check each model on a few cases before training."""
    from models.training import smoke_check

    subset = data.subset(training[:8])
    for name in names:
        smoke_check(name, served[name].input_size, served[name].export_dir,
                    subset.resized(served[name].input_size), subset.labels,
                    _training_options(parameters), work_dir / name)


@task(cache_policy=NO_CACHE)
def train_and_decide(settings: Settings, name: str, current: ServedVersion,
                     data: LabelledImages, training: list[int], validation: list[int],
                     parameters: RetrainParameters, run_id: str) -> ModelOutcome:
    """Fine-tune one model, evaluate it against the served version and publish if better."""
    from models.evaluation import is_not_worse, roc_curve
    from models.roc_plot import draw_roc_curves
    from models.training import (
        build_from_export,
        compile_for_fine_tuning,
        fine_tune,
        predict,
        predict_export,
        release_memory,
    )

    logger = get_run_logger()
    size = current.input_size
    train_set = data.subset(training)
    validation_set = data.subset(validation)
    validation_images = validation_set.resized(size)
    labels = validation_set.labels
    run_dir = settings.retraining_dir / run_id / name

    model = build_from_export(name, size, current.export_dir)
    try:
        compile_for_fine_tuning(model, name, _training_options(parameters))
        history = fine_tune(
            model, name, (train_set.resized(size), train_set.labels),
            (validation_images, labels), class_weights(train_set.labels),
            _training_options(parameters), run_dir / "candidate.keras")
        candidate_scores = predict(model, validation_images)
        current_scores = predict_export(current.export_dir, validation_images)

        candidate_eval, current_eval, metrics = _compare_on_validation(
            settings, parameters, current, labels, candidate_scores, current_scores)
        metrics["training"] = {"instances": len(training), "epochs_run": history.epochs_run,
                               "best_validation_loss": history.best_validation_loss,
                               "final_learning_rate": history.final_learning_rate}

        roc_path = draw_roc_curves(
            {"candidate": (*roc_curve(labels, candidate_scores), candidate_eval.auc),
             f"v{current.version}": (*roc_curve(labels, current_scores), current_eval.auc)},
            run_dir / ROC_CURVE_FILE, f"{name}: candidate vs version {current.version}")

        not_worse = is_not_worse(candidate_eval.auc, current_eval.auc,
                                 parameters.promotion_margin)
        reason = text("retrain.reason_not_worse" if not_worse else "retrain.reason_worse",
                      settings.language, candidate=candidate_eval.auc,
                      current=current_eval.auc, margin=parameters.promotion_margin)
        outcome = ModelOutcome(
            name=name, base_version=current.version, reason=reason,
            decision="dry_run" if parameters.dry_run else
            ("promoted" if not_worse else "rejected"),
            current_scores=current_scores, candidate_scores=candidate_scores,
            metrics=metrics, threshold=candidate_eval.chosen.threshold,
            checkpoint_path=run_dir / "candidate.keras", roc_curve_path=roc_path)

        if outcome.decision == "promoted":
            outcome.published_version = _publish(settings, model, current, outcome, run_id,
                                                 len(data.instances))
        logger.info("%s: candidate AUC %.3f, version %d AUC %.3f: %s", name,
                    candidate_eval.auc, current.version, current_eval.auc, outcome.decision)
        return outcome
    finally:
        del model
        release_memory()


@task(cache_policy=NO_CACHE)
def score_current(name: str, current: ServedVersion, data: LabelledImages,
                  validation: list[int]) -> ModelOutcome:
    """Score a model that is not retrained, for the ensemble."""
    from models.training import predict_export

    images = data.subset(validation).resized(current.input_size)
    return ModelOutcome(name=name, base_version=current.version, decision="not_trained",
                        reason="", current_scores=predict_export(current.export_dir, images))


@task(cache_policy=NO_CACHE)
def choose_ensemble(settings: Settings, outcomes: dict[str, ModelOutcome],
                    served: dict[str, ServedVersion], labels: np.ndarray,
                    parameters: RetrainParameters, operating_threshold: float,
                    run_dir: Path) -> dict[str, Any]:
    """Choose ensemble weights (from each final version's AUC) and the ensemble threshold."""
    from models.evaluation import (
        bootstrap_auc,
        ensemble_weights_from_auc,
        evaluate,
        roc_auc,
        roc_curve,
        weighted_mean,
    )
    from models.roc_plot import draw_roc_curves

    final_scores = {name: outcomes[name].final_scores for name in settings.model_names}
    weights = ensemble_weights_from_auc({name: roc_auc(labels, scores)
                                         for name, scores in final_scores.items()})
    ensemble_scores = weighted_mean(final_scores, weights)
    bootstrap = bootstrap_auc(labels, {"ensemble": ensemble_scores},
                              samples=parameters.bootstrap_samples, seed=parameters.seed)
    evaluation = evaluate(labels, ensemble_scores, bootstrap["ensemble"],
                          operating_threshold=operating_threshold,
                          target_sensitivity=settings.target_sensitivity)
    versions = {name: (outcomes[name].published_version or served[name].version)
                for name in settings.model_names}
    roc_path = draw_roc_curves({"ensemble": (*roc_curve(labels, ensemble_scores),
                                             evaluation.auc)},
                               run_dir / f"ensemble-{ROC_CURVE_FILE}", "ensemble")
    return {
        "model_versions": _format_versions(versions, settings.model_names),
        "weights": weights,
        "threshold": evaluation.chosen.threshold,
        "metrics": evaluation.as_dict(),
        "roc_curve_path": str(roc_path),
    }


# --- Helpers -----------------------------------------------------------------------------


def _training_options(parameters: RetrainParameters):
    from models.training import TrainingOptions

    return TrainingOptions(epochs=parameters.epochs, learning_rate=parameters.learning_rate,
                           unfreeze_fraction=parameters.unfreeze_fraction,
                           batch_size=parameters.batch_size, seed=parameters.seed)


def _format_versions(versions: dict[str, int], order: tuple[str, ...]) -> str:
    """Format versions like `SecondOpinion.model_versions`, in the configured model order."""
    return ",".join(f"{name}:{versions[name]}" for name in order)


def _compare_on_validation(settings: Settings, parameters: RetrainParameters,
                           current: ServedVersion, labels: np.ndarray,
                           candidate_scores: np.ndarray, current_scores: np.ndarray):
    """Evaluate candidate and served version on the same cases and bootstrap resamples.

    Returns both evaluations and the metrics dictionary stored with the candidate, which
    includes the 95% interval of the paired AUC difference.
    """
    from models.evaluation import bootstrap_auc, evaluate, percentile_interval

    bootstrap = bootstrap_auc(labels, {"candidate": candidate_scores, "current": current_scores},
                              samples=parameters.bootstrap_samples, seed=parameters.seed)
    options = {"operating_threshold": current.threshold,
               "target_sensitivity": settings.target_sensitivity}
    candidate_eval = evaluate(labels, candidate_scores, bootstrap["candidate"], **options)
    current_eval = evaluate(labels, current_scores, bootstrap["current"], **options)
    metrics = {
        "candidate": candidate_eval.as_dict(),
        "current": current_eval.as_dict(),
        "auc_difference_ci": list(percentile_interval(bootstrap["candidate"]
                                                      - bootstrap["current"])),
        "target_sensitivity": settings.target_sensitivity,
        "preprocessing_version": PREPROCESSING_VERSION,
    }
    return candidate_eval, current_eval, metrics


def _publish(settings: Settings, model, current: ServedVersion, outcome: ModelOutcome,
             run_id: str, labelled: int) -> int:
    """Export the candidate through the repository (staging, check, rename) and record it."""
    import keras
    import tensorflow as tf

    from models.export import export_saved_model
    from models.repository import ModelRepository

    def write_export(folder: Path) -> None:
        export_saved_model(model, folder, current.input_size, model_name=current.name)
        shutil.copyfile(outcome.roc_curve_path, folder / "assets.extra" / ROC_CURVE_FILE)

    metadata = {
        "architecture": current.name,
        "input_size": current.input_size,
        "weights_source": "fine-tuned",
        "weights_warning": current.metadata.get("weights_warning"),
        "training": "fine-tuned",
        "base_version": current.version,
        "flow_run_id": run_id,
        "labelled_instances": labelled,
        "checkpoint": str(outcome.checkpoint_path),
        "threshold": outcome.threshold,
        "metrics": outcome.metrics,
        "preprocessing_version": PREPROCESSING_VERSION,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    repository = ModelRepository(settings.model_repository)
    version = repository.publish(current.name, write_export, metadata)
    return version


def _candidate_row(outcome: ModelOutcome, run_id: str) -> dict[str, Any]:
    return {
        "flow_run_id": run_id,
        "model_name": outcome.name,
        "base_version": outcome.base_version,
        "decision": outcome.decision,
        "reason": outcome.reason,
        "published_version": outcome.published_version,
        "threshold": outcome.threshold,
        "metrics": outcome.metrics,
        "checkpoint_path": str(outcome.checkpoint_path),
        "roc_curve_path": None if outcome.roc_curve_path is None else str(outcome.roc_curve_path),
        "created_at": dt.datetime.now(dt.timezone.utc),
    }


def _version_row(outcome: ModelOutcome, current: ServedVersion) -> dict[str, Any]:
    return {
        "model_name": outcome.name,
        "version": outcome.published_version,
        "input_size": current.input_size,
        "weights_source": "fine-tuned",
        "warning": current.metadata.get("weights_warning"),
        "threshold": outcome.threshold,
        "metrics": outcome.metrics,
        "status": "published",
    }


def _metrics_table(outcomes: dict[str, ModelOutcome], ensemble: dict[str, Any] | None
                   ) -> list[dict[str, Any]]:
    def auc_text(evaluation: dict | None) -> str:
        if not evaluation:
            return ""
        return (f"{evaluation['auc']:.3f} [{evaluation['auc_ci_low']:.3f}, "
                f"{evaluation['auc_ci_high']:.3f}]")

    def point_text(evaluation: dict | None, key: str) -> str:
        if not evaluation:
            return ""
        point = evaluation[key]
        return (f"{point['sensitivity']:.2f} / {point['specificity']:.2f} "
                f"@ {point['threshold']:.3f}")

    rows = []
    for outcome in outcomes.values():
        if outcome.decision == "not_trained":
            continue
        candidate = outcome.metrics.get("candidate")
        current = outcome.metrics.get("current")
        rows.append({
            "model": outcome.name,
            "served version": outcome.base_version,
            "candidate AUC [95% CI]": auc_text(candidate),
            "served AUC [95% CI]": auc_text(current),
            "candidate sens/spec at operating threshold": point_text(candidate, "operating"),
            "served sens/spec at operating threshold": point_text(current, "operating"),
            "candidate sens/spec at chosen threshold": point_text(candidate, "chosen"),
            "decision": outcome.decision,
            "published version": outcome.published_version or "",
        })
    if ensemble is not None:
        rows.append({
            "model": "ensemble",
            "served version": ensemble["model_versions"],
            "candidate AUC [95% CI]": auc_text(ensemble["metrics"]),
            "served AUC [95% CI]": "",
            "candidate sens/spec at operating threshold": point_text(ensemble["metrics"],
                                                                     "operating"),
            "served sens/spec at operating threshold": "",
            "candidate sens/spec at chosen threshold": point_text(ensemble["metrics"],
                                                                  "chosen"),
            "decision": "",
            "published version": "",
        })
    return rows


def _report(settings: Settings, run_id: str, outcomes: dict[str, ModelOutcome],
            ensemble: dict[str, Any] | None, parameters: RetrainParameters,
            training_count: int, validation_count: int) -> str:
    language = settings.language
    lines = [f"# {text('retrain.title', language)}", "",
             text("retrain.data", language, run_id=run_id, training=training_count,
                  validation=validation_count), ""]
    if parameters.dry_run:
        lines += [text("retrain.dry_run", language), ""]
    for outcome in outcomes.values():
        if outcome.decision == "not_trained":
            continue
        key = f"retrain.decision_{outcome.decision}"
        lines.append("- " + text(key, language, model=outcome.name,
                                 base=outcome.base_version,
                                 version=outcome.published_version or "",
                                 reason=outcome.reason))
        if outcome.roc_curve_path is not None:
            lines.append("  " + text("retrain.roc_curve", language,
                                     path=outcome.roc_curve_path))
    if ensemble is not None:
        weights = ", ".join(f"{name} {weight:.2f}" for name, weight in ensemble["weights"].items())
        lines += ["", text("retrain.ensemble", language, versions=ensemble["model_versions"],
                           weights=weights, threshold=ensemble["threshold"],
                           auc=ensemble["metrics"]["auc"],
                           percent=round(settings.target_sensitivity * 100))]
    return "\n".join(lines) + "\n"


def _check_models_configured(parameters: RetrainParameters, settings: Settings) -> None:
    unknown = [name for name in parameters.models if name not in settings.model_names]
    if unknown:
        raise ConfigurationError(
            f"models {unknown} are not among the configured models "
            f"{list(settings.model_names)}; choose from those or change MAMMO_MODEL_NAMES")


# --- Flow --------------------------------------------------------------------------------


@flow(name="retrain_models", log_prints=False)
def retrain_models(parameters: RetrainParameters = RetrainParameters()) -> dict[str, Any]:
    """Fine-tune the selected models on labelled cases and promote those not worse.

    Returns the run's status, counts and one entry per model with its decision and
    published version.
    """
    settings = Settings()
    _check_models_configured(parameters, settings)
    logger = get_run_logger()
    run_id = str(flow_run.id or f"local-{uuid.uuid4()}")

    engine = make_engine(settings.resolved_database_url())
    session_factory = make_session_factory(engine)
    with session_factory() as session:
        new_labels = label_store.count_labels_since(
            session, records.last_completed_run_start(session))
        instances = label_store.labelled_instances(session)
    with session_factory.begin() as session:
        records.start_retraining_run(session, run_id, parameters=parameters.model_dump(),
                                     dry_run=parameters.dry_run)

    status = "failed"
    message: str | None = None
    result: dict[str, Any] = {"flow_run_id": run_id, "new_labels": new_labels,
                              "labelled_instances": len(instances), "models": {}}
    try:
        if new_labels < parameters.min_new_labels:
            status = "skipped"
            message = text("retrain.skipped", settings.language, new=new_labels,
                           minimum=parameters.min_new_labels)
            logger.info(message)
            create_markdown_artifact(
                key="retraining-report",
                markdown=f"# {text('retrain.title', settings.language)}\n\n{message}\n",
                description=message)
            return {**result, "status": status}

        served = find_served_versions(settings, session_factory)
        canonical_size = max(version.input_size for version in served.values())
        data = load_dataset(settings, instances, canonical_size)
        training, validation = split_by_patient(data.instances, parameters.validation_fraction,
                                                parameters.seed)
        logger.info("Training on %d instances, validating on %d (split by patient)",
                    len(training), len(validation))
        run_dir = settings.retraining_dir / run_id
        smoke_check_models(parameters.models, served, quote(data), training, parameters,
                           run_dir / "smoke")

        outcomes: dict[str, ModelOutcome] = {}
        for name in settings.model_names:
            if name in parameters.models:
                outcome = train_and_decide(settings, name, served[name], quote(data), training,
                                           validation, parameters, run_id)
                with session_factory.begin() as session:
                    records.record_candidates(session, [_candidate_row(outcome, run_id)])
                    if outcome.published_version is not None:
                        record_model_versions(session, [_version_row(outcome, served[name])])
            else:
                outcome = score_current(name, served[name], quote(data), validation)
            outcomes[name] = outcome

        labels = data.subset(validation).labels
        with session_factory() as session:
            stored = records.ensemble_configuration_for(
                session, _format_versions({n: v.version for n, v in served.items()},
                                          settings.model_names))
            operating = stored.threshold if stored is not None else settings.operating_threshold
        ensemble = choose_ensemble(settings, quote(outcomes), served, labels, parameters,
                                   operating, run_dir)
        if not parameters.dry_run:
            with session_factory.begin() as session:
                records.record_ensemble_configuration(session, {
                    "flow_run_id": run_id,
                    "model_versions": ensemble["model_versions"],
                    "weights": ensemble["weights"],
                    "threshold": ensemble["threshold"],
                    "target_sensitivity": settings.target_sensitivity,
                    "metrics": ensemble["metrics"],
                    "created_at": dt.datetime.now(dt.timezone.utc),
                })

        create_table_artifact(key="retraining-metrics", table=_metrics_table(outcomes, ensemble),
                              description=text("retrain.table_description", settings.language))
        report = _report(settings, run_id, outcomes, ensemble, parameters, len(training),
                         len(validation))
        create_markdown_artifact(key="retraining-report", markdown=report,
                                 description=text("retrain.title", settings.language))
        status = "completed"
        result["models"] = {
            name: {"decision": o.decision, "base_version": o.base_version,
                   "published_version": o.published_version, "threshold": o.threshold,
                   "auc": o.metrics.get("candidate", {}).get("auc"),
                   "current_auc": o.metrics.get("current", {}).get("auc")}
            for name, o in outcomes.items()}
        result["ensemble"] = {key: ensemble[key] for key in ("model_versions", "weights",
                                                             "threshold")}
        result["ensemble"]["auc"] = ensemble["metrics"]["auc"]
        result["ensemble"]["auc_ci"] = [ensemble["metrics"]["auc_ci_low"],
                                        ensemble["metrics"]["auc_ci_high"]]
        return {**result, "status": status}
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        logger.error("Retraining run %s failed: %s", run_id, message)
        raise
    finally:
        with session_factory.begin() as session:
            records.finish_retraining_run(session, run_id, status=status,
                                          new_labels=new_labels,
                                          labelled_instances=len(instances), message=message)
        engine.dispose()
