"""The serving contract every exported model meets, and its check against GetModelMetadata.

Every model has the signature ``serving_default`` with the input ``image`` (uint8,
``[batch, height, width, 1]``, height and width fixed per model) and the output
``malignancy_probability`` (float32, ``[batch, 1]``). Conversion to three channels and the
backbone's normalisation happen inside the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from mammo.errors import ModelContractError

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "malignancy_probability"
INPUT_CHANNELS = 1

#: Metadata key under which GetModelMetadata returns the SignatureDefMap.
SIGNATURE_DEF_FIELD = "signature_def"


@dataclass(frozen=True)
class ServedModel:
    """A served model version that meets the contract, with the input size it expects."""

    name: str
    version: int
    input_height: int
    input_width: int


def served_model_from_metadata(
    name: str, response: get_model_metadata_pb2.GetModelMetadataResponse
) -> ServedModel:
    """Check a GetModelMetadata response against the contract and return the served model.

    Raises ModelContractError naming the model and the first mismatch found.
    """
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    packed = response.metadata.get(SIGNATURE_DEF_FIELD)
    if packed is None or not packed.Unpack(signature_def_map):
        raise ModelContractError(
            f"model {name!r}: GetModelMetadata returned no {SIGNATURE_DEF_FIELD!r} metadata"
        )

    signature = signature_def_map.signature_def.get(SIGNATURE_NAME)
    if signature is None:
        raise ModelContractError(
            f"model {name!r} has no signature {SIGNATURE_NAME!r}, only "
            f"{sorted(signature_def_map.signature_def)}"
        )
    height, width = _check_input(name, signature)
    _check_output(name, signature)
    return ServedModel(name, response.model_spec.version.value, height, width)


def _check_input(name: str, signature: meta_graph_pb2.SignatureDef) -> tuple[int, int]:
    if list(signature.inputs) != [INPUT_NAME]:
        raise ModelContractError(
            f"model {name!r}: signature {SIGNATURE_NAME!r} has inputs {sorted(signature.inputs)}, "
            f"expected exactly [{INPUT_NAME!r}]"
        )
    info = signature.inputs[INPUT_NAME]
    _check_dtype(name, INPUT_NAME, info, types_pb2.DT_UINT8)

    dims = _dims(info.tensor_shape)
    expected = f"[batch, height, width, {INPUT_CHANNELS}] with fixed height and width"
    if dims is None or len(dims) != 4:
        raise ModelContractError(
            f"model {name!r}: input {INPUT_NAME!r} has shape {_describe(dims)}, expected {expected}"
        )
    _batch, height, width, channels = dims
    if channels != INPUT_CHANNELS or height <= 0 or width <= 0:
        raise ModelContractError(
            f"model {name!r}: input {INPUT_NAME!r} has shape {_describe(dims)}, expected {expected}"
        )
    return height, width


def _check_output(name: str, signature: meta_graph_pb2.SignatureDef) -> None:
    if OUTPUT_NAME not in signature.outputs:
        raise ModelContractError(
            f"model {name!r}: signature {SIGNATURE_NAME!r} has outputs "
            f"{sorted(signature.outputs)}, expected {OUTPUT_NAME!r}"
        )
    info = signature.outputs[OUTPUT_NAME]
    _check_dtype(name, OUTPUT_NAME, info, types_pb2.DT_FLOAT)

    dims = _dims(info.tensor_shape)
    if dims is not None and (len(dims) != 2 or dims[1] not in (1, -1)):
        raise ModelContractError(
            f"model {name!r}: output {OUTPUT_NAME!r} has shape {_describe(dims)}, "
            "expected [batch, 1]"
        )


def _check_dtype(
    name: str, tensor: str, info: meta_graph_pb2.TensorInfo, expected: types_pb2.DataType
) -> None:
    if info.dtype != expected:
        raise ModelContractError(
            f"model {name!r}: tensor {tensor!r} has dtype {types_pb2.DataType.Name(info.dtype)}, "
            f"expected {types_pb2.DataType.Name(expected)}"
        )


def _dims(shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """Return the dimension sizes (-1 for unknown), or None for an unknown rank."""
    if shape.unknown_rank:
        return None
    return [dim.size for dim in shape.dim]


def _describe(dims: list[int] | None) -> str:
    return "unknown rank" if dims is None else str(dims)
