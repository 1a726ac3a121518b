"""What the running image must answer: `/metadata`, and `/predict` on a real image file.

The invariants hold for any model, trained or not: one probability and one
variance per class, probabilities summing to 1, variances non-negative, the
requested samples and seed echoed, and the same seed giving the same answer.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from deploy.container.engine import ContainerError

SUM_TOLERANCE = 1e-4
REPEAT_TOLERANCE = 1e-6


def expect(condition: bool, message: str) -> None:
    """Raise `ContainerError(message)` unless `condition` holds."""
    if not condition:
        raise ContainerError(f"check failed: {message}")


def get_metadata(client: httpx.Client) -> dict:
    """GET /metadata: 200 and a non-empty list of class names."""
    response = client.get("/metadata")
    expect(response.status_code == 200, f"/metadata answered {response.status_code}")
    body = response.json()
    expect(bool(body.get("class_names")), f"/metadata has no class_names: {body}")
    return body


def predict(client: httpx.Client, image: Path, samples: int, seed: int) -> dict:
    """POST /predict with one image file; the response body, after checking the status."""
    files = {"files": (image.name, image.read_bytes(), "image/png")}
    data = {"samples": str(samples), "seed": str(seed)}
    response = client.post("/predict", files=files, data=data)
    expect(
        response.status_code == 200, f"/predict answered {response.status_code}: {response.text}"
    )
    return response.json()


def check_prediction(body: dict, classes: list[str], samples: int, seed: int) -> dict:
    """The response's invariants; returns its one prediction."""
    expect(body.get("samples") == samples, f"samples {body.get('samples')} != {samples}")
    expect(body.get("seed") == seed, f"seed {body.get('seed')} != {seed}")
    expect(len(body.get("predictions", [])) == 1, f"not one prediction: {body}")
    prediction = body["predictions"][0]
    probabilities, variance = prediction["probabilities"], prediction["variance"]
    expect(len(probabilities) == len(classes), f"{len(probabilities)} probabilities")
    expect(len(variance) == len(classes), f"{len(variance)} variances")
    total = sum(probabilities)
    expect(abs(total - 1.0) <= SUM_TOLERANCE, f"probabilities sum to {total}")
    expect(min(variance) >= 0.0, f"negative variance: {min(variance)}")
    label_ok = prediction["label"] == classes[prediction["class_index"]]
    expect(label_ok, f"label {prediction['label']!r} is not class {prediction['class_index']}")
    return prediction


def check_service(
    base_url: str, image: Path, samples: int, seed: int, expect_label: str | None = None
) -> dict:
    """All the checks, in order; returns the first prediction (for the report)."""
    with httpx.Client(base_url=base_url, timeout=120) as client:
        metadata = get_metadata(client)
        classes = list(metadata["class_names"])
        first = check_prediction(predict(client, image, samples, seed), classes, samples, seed)
        again = check_prediction(predict(client, image, samples, seed), classes, samples, seed)
    pairs = zip(first["probabilities"], again["probabilities"], strict=True)
    worst = max(abs(a - b) for a, b in pairs)
    expect(worst <= REPEAT_TOLERANCE, f"same seed, probabilities differ by {worst}")
    if expect_label is not None:
        expect(first["label"] == expect_label, f"label {first['label']!r} != {expect_label!r}")
    return {"model": metadata.get("model"), **first}
