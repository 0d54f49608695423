"""Tests of serving.request_batches: resizing, request sizing and batch splitting."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from serving.request_batches import (
    REQUEST_OVERHEAD_BYTES,
    max_images_per_request,
    resize_images,
    split_batch,
)


class TestResizeImages:
    def test_same_size_adds_channel_axis(self) -> None:
        images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)

        resized = resize_images(images, 4, 4)

        assert resized.shape == (2, 4, 4, 1)
        assert np.array_equal(resized[..., 0], images)

    def test_shrinking_uses_area_interpolation(self) -> None:
        images = np.random.default_rng(1).integers(0, 256, (3, 64, 64), np.uint8)

        resized = resize_images(images, 24, 40)

        assert resized.shape == (3, 24, 40, 1)
        assert resized.dtype == np.uint8
        for image, result in zip(images, resized):
            expected = cv2.resize(image, (40, 24), interpolation=cv2.INTER_AREA)
            assert np.array_equal(result[..., 0], expected)

    def test_enlarging_uses_linear_interpolation(self) -> None:
        images = np.random.default_rng(2).integers(0, 256, (1, 16, 16), np.uint8)

        resized = resize_images(images, 32, 32)

        expected = cv2.resize(images[0], (32, 32), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resized[0, :, :, 0], expected)


class TestMaxImagesPerRequest:
    def test_fills_limit(self) -> None:
        limit = 4 * 1024 * 1024

        count = max_images_per_request(224, 224, limit)

        assert count == (limit - REQUEST_OVERHEAD_BYTES) // (224 * 224)
        assert count == 83

    def test_image_too_large_gives_zero(self) -> None:
        assert max_images_per_request(2048, 2048, 4 * 1024 * 1024) == 0

    def test_overhead_covers_real_request(self) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "efficientnetb7"
        request.model_spec.signature_name = "serving_default"
        request.output_filter.append("malignancy_probability")
        tensor = request.inputs["image"]
        tensor.dtype = types_pb2.DT_UINT8
        shape = (83, 224, 224, 1)
        tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape)
        tensor.tensor_content = bytes(83 * 224 * 224)

        overhead = request.ByteSize() - 83 * 224 * 224

        assert overhead < REQUEST_OVERHEAD_BYTES // 10


class TestSplitBatch:
    @pytest.mark.parametrize(
        ("count", "size", "lengths"), [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (2, 5, [2])]
    )
    def test_keeps_order(self, count: int, size: int, lengths: list[int]) -> None:
        images = np.arange(count)

        batches = split_batch(images, size)

        assert [len(batch) for batch in batches] == lengths
        assert np.array_equal(np.concatenate(batches), images)
