"""Replay a version's warmup records at load, as TF Serving does before it serves a version.

TF Serving reads ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
PredictionLog messages) and runs each request once through the loaded SavedModel before the
version becomes AVAILABLE (``--enable_model_warmup``, on by default). A file with more than
`MAX_WARMUP_RECORDS` records, a record that does not parse, or a request that fails makes
the load fail. A version without the file loads without warmup.

The local server replays ``predict_log`` records only, because it implements Predict only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from serving.prediction import predict
from serving.rpc_status import RpcStatusError

if TYPE_CHECKING:
    from serving.servable_manager import Servable

#: Path of the warmup records inside a version folder (``kSavedModelAssetsExtraDirectory``
#: and ``WarmupConsts::kRequestsFileName`` in TF Serving).
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"

#: Records TF Serving accepts in one warmup file (``WarmupConsts::kMaxNumRecords``).
MAX_WARMUP_RECORDS = 1000


class WarmupError(Exception):
    """The warmup file of a version cannot be read or one of its requests failed."""


@dataclass(frozen=True)
class WarmupResult:
    """Number of warmup requests replayed and how long the replay took, in seconds."""

    requests: int
    seconds: float


def read_warmup_records(version_dir: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Return the PredictionLog records of ``version_dir``, or [] when it has no warmup file.

    Raises WarmupError for a file that is not a TFRecord of PredictionLog messages or contains
    more than `MAX_WARMUP_RECORDS` records.
    """
    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        return []

    records = []
    try:
        for index, serialized in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            if index == MAX_WARMUP_RECORDS:
                raise WarmupError(
                    f"warmup file {path} contains more than {MAX_WARMUP_RECORDS} records, the "
                    "maximum TF Serving replays"
                )
            records.append(prediction_log_pb2.PredictionLog.FromString(serialized))
    except (tf.errors.OpError, DecodeError) as error:
        raise WarmupError(
            f"warmup file {path} is not a TFRecord of PredictionLog: {error}"
        ) from error
    return records


def replay_warmup_records(servable: Servable) -> WarmupResult:
    """Run every warmup request of ``servable`` once through its signature.

    Raises WarmupError naming the record when a record is not a ``predict_log`` or its
    request fails; TF Serving then fails the load of the version.
    """
    records = read_warmup_records(servable.path)
    started = time.perf_counter()
    for index, record in enumerate(records):
        log_type = record.WhichOneof("log_type")
        if log_type != "predict_log":
            raise WarmupError(
                f"warmup record {index} of {servable.path / WARMUP_FILE} is a {log_type}, but "
                "the local model server replays predict_log records only"
            )
        try:
            predict(servable, record.predict_log.request)
        except RpcStatusError as error:
            raise WarmupError(
                f"warmup request {index} failed with {error.code.name}: {error.message}"
            ) from error
    return WarmupResult(len(records), time.perf_counter() - started)
