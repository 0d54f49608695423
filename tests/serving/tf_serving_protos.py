"""Python classes for TF Serving's BatchingParameters and MonitoringConfig messages.

The ``tensorflow-serving-api`` wheel ships ``model_server_config_pb2`` but no generated code
for these two messages, so this module builds their descriptors from the field definitions
in TF Serving's .proto files and lets protobuf make the classes. Parsing a config file with
``text_format.Parse`` into them rejects any field name that TF Serving would reject.

Sources, in the tensorflow/serving repository:

- ``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``, message
  BatchingParameters: fields 1 to 7. Newer TF Serving releases add fields after 7; a file
  that uses them fails here until they are added below.
- ``tensorflow_serving/config/monitoring_config.proto``: messages PrometheusConfig and
  MonitoringConfig.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from google.protobuf.message import Message

PACKAGE = "tensorflow.serving"

Field = descriptor_pb2.FieldDescriptorProto

#: (name, number, type, label, type_name) of BatchingParameters' fields.
BATCHING_PARAMETERS_FIELDS = (
    ("max_batch_size", 1, Field.TYPE_MESSAGE, Field.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, Field.TYPE_MESSAGE, Field.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, Field.TYPE_MESSAGE, Field.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, Field.TYPE_MESSAGE, Field.LABEL_OPTIONAL,
     ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, Field.TYPE_MESSAGE, Field.LABEL_OPTIONAL,
     ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, Field.TYPE_INT64, Field.LABEL_REPEATED, None),
    ("pad_variable_length_inputs", 7, Field.TYPE_BOOL, Field.LABEL_OPTIONAL, None),
)

PROMETHEUS_CONFIG_FIELDS = (
    ("enable", 1, Field.TYPE_BOOL, Field.LABEL_OPTIONAL, None),
    ("path", 2, Field.TYPE_STRING, Field.LABEL_OPTIONAL, None),
)

MONITORING_CONFIG_FIELDS = (
    ("prometheus_config", 1, Field.TYPE_MESSAGE, Field.LABEL_OPTIONAL,
     f".{PACKAGE}.PrometheusConfig"),
)


def _add_message(
    file_proto: descriptor_pb2.FileDescriptorProto,
    name: str,
    fields: tuple[tuple[str, int, int, int, str | None], ...],
) -> None:
    message = file_proto.message_type.add(name=name)
    for field_name, number, field_type, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name is not None:
            field.type_name = type_name
        if label == Field.LABEL_REPEATED and field_type != Field.TYPE_MESSAGE:
            # proto3 packs repeated scalars by default. The text format does not depend on it.
            field.options.packed = True


def _build_pool() -> descriptor_pool.DescriptorPool:
    # A pool of its own, so these names cannot clash with any TF Serving module in the default
    # pool.
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    session_bundle_config = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[wrappers.name],
    )
    _add_message(session_bundle_config, "BatchingParameters", BATCHING_PARAMETERS_FIELDS)
    pool.Add(session_bundle_config)

    monitoring_config = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package=PACKAGE,
        syntax="proto3",
    )
    _add_message(monitoring_config, "PrometheusConfig", PROMETHEUS_CONFIG_FIELDS)
    _add_message(monitoring_config, "MonitoringConfig", MONITORING_CONFIG_FIELDS)
    pool.Add(monitoring_config)
    return pool


_POOL = _build_pool()


def message_class(name: str) -> type[Message]:
    """Return the class of ``tensorflow.serving.<name>`` built from the definitions above."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


BatchingParameters = message_class("BatchingParameters")
MonitoringConfig = message_class("MonitoringConfig")
