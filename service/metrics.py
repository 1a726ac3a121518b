"""Prometheus histograms for drift and load, served at /metrics next to BentoML's own."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Histogram

from service.schemas import ImagePrediction

_NATS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5)


class Observe:
    """The service's own metrics, created once per process."""

    def __init__(self) -> None:
        self.entropy = Histogram(
            "uqserve_predictive_entropy", "Predictive entropy per image (nats)", buckets=_NATS
        )
        self.mutual_information = Histogram(
            "uqserve_mutual_information", "Mutual information per image (nats)", buckets=_NATS
        )
        self.samples = Histogram(
            "uqserve_samples",
            "MC dropout samples per request",
            buckets=(1, 5, 10, 30, 100, 200, 500),
        )
        self.batch_images = Histogram(
            "uqserve_batch_images",
            "Images per adaptive batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.batch_requests = Histogram(
            "uqserve_batch_requests",
            "Requests with images in one adaptive batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )

    def predictions(self, predictions: Sequence[ImagePrediction], samples: int) -> None:
        """Record one request's uncertainty figures."""
        self.samples.observe(samples)
        for prediction in predictions:
            self.entropy.observe(prediction.predictive_entropy)
            self.mutual_information.observe(prediction.epistemic)

    def batch(self, requests: int, images: int) -> None:
        """Record the size of one adaptive batch."""
        self.batch_requests.observe(requests)
        self.batch_images.observe(images)


observe = Observe()
