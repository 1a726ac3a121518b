"""The BentoML service in-process: BentoML's ASGI app driven by a test client."""

from __future__ import annotations

import io
import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
from PIL import Image

from adapters.images import decode_image
from adapters.model_store import StoredModel
from models.preprocessing import preprocess_images
from tests.conftest import bn_statistics
from tests.service_helpers import CLASSES, encode, png


def _files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"image{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


def _check_response(body: dict, images: int, samples: int, tag: str) -> None:
    assert body["model"] == tag
    assert body["samples"] == samples
    assert len(body["predictions"]) == images
    for p in body["predictions"]:
        probabilities = np.array(p["probabilities"])
        assert probabilities.shape == (len(CLASSES),)
        assert abs(probabilities.sum() - 1.0) < 1e-6
        assert np.all(np.array(p["variance"]) >= 0.0)
        assert p["label"] == CLASSES[p["class_index"]]
        assert p["class_index"] == int(probabilities.argmax())
        assert p["confidence"] == pytest.approx(probabilities.max())
        assert 0.0 <= p["epistemic"] <= p["predictive_entropy"] + 1e-9
        assert p["aleatoric"] == pytest.approx(p["predictive_entropy"] - p["epistemic"], abs=1e-6)
        assert np.isfinite(p["ood_score"])
        assert isinstance(p["out_of_distribution"], bool)
        _check_guarantees(p, StoredModel.open(tag).card, body["samples"], body["alpha"])


SCORE_FIELDS = {"mutual_information": "epistemic", "predictive_entropy": "predictive_entropy"}


def _check_guarantees(p: dict, card, samples: int, alpha: float) -> None:
    """The set is LAC's {c : 1 - p_c <= q(alpha)}, most probable first; `uncertain` is the
    certified acceptance rule, both recomputed from the card and the answer's own figures."""
    calibrated = card.guarantees.for_samples(samples)
    q = calibrated.sets.quantile(alpha)
    probabilities = np.array(p["probabilities"])
    expected = [CLASSES[c] for c in np.argsort(-probabilities, kind="stable")
                if 1.0 - probabilities[c] <= q + 1e-7]  # fmt: skip
    assert p["prediction_set"] == expected and p["set_size"] == len(expected)
    risk = calibrated.risk
    field = SCORE_FIELDS.get(risk.score)
    score = p[field] if field else 1.0 - p["confidence"]
    accepted = risk.threshold is not None and score <= risk.threshold + 1e-7
    assert p["uncertain"] == (not accepted)


def _reference(tag: str, blob: bytes, samples: int, stream: tuple[int, int]) -> np.ndarray:
    """What the model says about one image alone, in-process: mean probabilities (C,)."""
    stored = StoredModel.open(tag)
    x = preprocess_images([decode_image(blob, "x")], stored.card.model.preprocessing)
    draws = stored.predictor().sample(x, samples, image_seeds=[stream])  # (1, T, C)
    return draws.mean(axis=1)[0]


def test_predict_files(client, tag):
    response = client.post("/predict", files=_files(png(1), png(2)), data={"samples": "7"})
    assert response.status_code == 200, response.text
    _check_response(response.json(), images=2, samples=7, tag=tag)


def test_default_samples_come_from_the_model(client, tag):
    response = client.post("/predict", files=_files(png(1)))
    _check_response(response.json(), images=1, samples=6, tag=tag)


def test_seed_reproduces_and_matches_the_model_alone(client, tag):
    blobs = [png(3), png(4)]
    first = client.post("/predict", files=_files(*blobs), data={"samples": "9", "seed": "123"})
    again = client.post("/predict", files=_files(*blobs), data={"samples": "9", "seed": "123"})
    assert first.json() == again.json()
    assert first.json()["seed"] == 123
    for index, blob in enumerate(blobs):  # image i of a request uses the stream (seed, i)
        expected = _reference(tag, blob, 9, (123, index))
        got = first.json()["predictions"][index]["probabilities"]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unseeded_answer_reports_a_seed_that_reproduces_it(client):
    first = client.post("/predict", files=_files(png(5)), data={"samples": "5"}).json()
    again = client.post(
        "/predict", files=_files(png(5)), data={"samples": "5", "seed": str(first["seed"])}
    ).json()
    assert again["predictions"] == first["predictions"]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_other_modes_are_converted(client, mode):
    image = Image.open(io.BytesIO(png(6))).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    response = client.post("/predict", files=[("files", ("x", encode(image, fmt), "image/*"))])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF", "WEBP"])
def test_every_format_is_accepted(client, fmt):
    image = Image.open(io.BytesIO(png(7))).convert("RGB")
    response = client.post("/predict", files=[("files", ("x", encode(image, fmt), "image/*"))])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "array",
    [
        np.full((1, 10, 12), 100.0),  # (N, H, W)
        np.full((3, 10, 12), 100.0),
        np.full((1, 10, 12, 3), 100.0),  # (N, H, W, C)
        np.full((3, 10, 12, 4), 100.0),
        np.full((2, 10, 12, 1), 100.0),
    ],
)
def test_predict_array_shapes(client, tag, array):
    response = client.post("/predict_array", json={"images": array.tolist(), "samples": 4})
    assert response.status_code == 200, response.text
    _check_response(response.json(), images=array.shape[0], samples=4, tag=tag)


def test_array_and_file_give_the_same_answer(client):
    pixels = np.random.default_rng(8).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    blob = encode(Image.fromarray(pixels), "PNG")
    as_file = client.post("/predict", files=_files(blob), data={"samples": "5", "seed": "9"})
    as_array = client.post(
        "/predict_array", json={"images": [pixels.tolist()], "samples": 5, "seed": 9}
    )
    assert as_file.json()["predictions"] == as_array.json()["predictions"]


def test_metadata(client, tag):
    body = client.get("/metadata").json()
    assert body["model"] == tag
    assert body["class_names"] == list(CLASSES)
    assert body["input_shape"] == [32, 32, 3]
    assert body["default_samples"] == 6
    assert body["max_samples"] == 50
    assert body["keras_backend"] == keras.backend.backend()
    assert body["metrics"] == {"test_accuracy": 0.5}
    guarantees = body["guarantees"]
    card = StoredModel.open(tag).card
    assert guarantees["method"] == "lac" and guarantees["calibration_size"] == 60
    assert guarantees["alpha_range"] == [1 / 61, 1.0]
    assert guarantees["default_alpha"] == card.guarantees.default_alpha
    for name in ("mc", "single"):
        acceptance = guarantees[name]["acceptance"]
        assert acceptance == getattr(card.guarantees, name).risk.model_dump()
        assert {"target_risk", "delta", "score", "threshold", "reason"} <= set(acceptance)
    assert '"scores":' not in json.dumps(guarantees)  # the calibration scores stay in the card


def test_probes_metrics_and_openapi(client):
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    client.post("/predict", files=_files(png(9)))
    metrics = client.get("/metrics").text
    for name in ("uqserve_predictive_entropy", "uqserve_mutual_information", "uqserve_samples"):
        assert f"{name}_count" in metrics
    docs = client.get("/docs.json").json()
    assert {"/predict", "/predict_array"} <= set(docs["paths"])
    schemas = json.dumps(docs["components"]["schemas"])
    assert "epistemic" in schemas and "probabilities" in schemas


def test_concurrent_requests_get_their_own_answers(client):
    """Many threads, different images: each answer equals that image's answer alone."""
    import bentoml

    model = bentoml.get_current_service().predictor.model
    before = bn_statistics(model)
    blobs = [png(100 + i) for i in range(12)]
    alone = [
        client.post("/predict", files=_files(b), data={"seed": "1", "samples": "5"}).json()
        for b in blobs
    ]

    def call(index: int) -> dict:
        data = {"seed": "1", "samples": "5"}
        return client.post("/predict", files=_files(blobs[index]), data=data).json()

    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(call, list(range(12)) * 2))
    for index, answer in enumerate(together):
        assert answer["predictions"] == alone[index % 12]["predictions"]
    for old, new in zip(before, bn_statistics(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_the_service_runs_blas_on_one_thread(client):
    from threadpoolctl import threadpool_info

    assert client.get("/readyz").status_code == 200  # the service has started
    blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and set(blas) == {1}


def test_alpha_sets_nest_and_default_from_the_model(client, tag):
    card = StoredModel.open(tag).card
    blob = png(5)
    sizes = []
    for alpha in (None, 0.05, 0.5, 0.9):
        data = {"samples": "6", "seed": "3"} | ({} if alpha is None else {"alpha": str(alpha)})
        response = client.post("/predict", files=_files(blob), data=data)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["alpha"] == (card.guarantees.default_alpha if alpha is None else alpha)
        _check_response(body, images=1, samples=6, tag=tag)
        sizes.append((body["alpha"], set(body["predictions"][0]["prediction_set"])))
    by_alpha = sorted(sizes, key=lambda item: item[0])
    for (_, wide), (_, narrow) in itertools.pairwise(by_alpha):
        assert narrow <= wide  # a larger alpha never adds a class


def test_one_sample_uses_the_single_sample_calibration(client, tag):
    response = client.post("/predict_array", json={"images": [[[0, 255], [255, 0]]], "samples": 1})
    assert response.status_code == 200, response.text
    _check_response(response.json(), images=1, samples=1, tag=tag)


@pytest.mark.parametrize("alpha", ["0.001", "1", "1.5", "-0.1", "0", "nan", "inf", "-inf"])
def test_alpha_outside_its_range_is_a_400_naming_the_range(client, alpha):
    response = client.post("/predict", files=_files(png(1)), data={"alpha": alpha})
    assert response.status_code == 400, response.text
    assert "alpha: expected 1/(n+1)=" in response.json()["error"]
    assert "<= alpha < 1" in response.json()["error"]


def test_alpha_that_is_not_a_number_is_a_400(client):
    response = client.post("/predict", files=_files(png(1)), data={"alpha": "tiny"})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("alpha:")


def test_alpha_below_one_over_n_plus_one_names_the_range(client, tag):
    n = StoredModel.open(tag).card.guarantees.mc.sets.n
    response = client.post("/predict_array", json={"images": [[[1, 2], [3, 4]]], "alpha": 0.5 / n})
    assert response.status_code == 400
    assert f"1/(n+1)={1 / (n + 1)}" in response.json()["error"]
