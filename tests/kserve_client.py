"""Call a served uqserve with the KServe Python SDK's REST client; print what it saw as JSON.

Runs in its own environment (`make kserve-client`: the SDK pins packages this
project's own environment holds at other versions), so it imports nothing
from the project:

    .venv-kserve/bin/python tests/kserve_client.py URL MODEL PIXELS.npy SEED SAMPLES

It checks liveness and readiness, then sends the UINT8 pixels twice, as JSON
and as binary data (binary outputs too), and prints
`{"live", "ready", "model_ready", "json": {output: values}, "binary": {...}}`.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

OUTPUTS = ("probabilities", "variance", "epistemic", "uncertain", "label", "class_index")


def _request(model: str, pixels: np.ndarray, seed: int, samples: int, binary: bool) -> InferRequest:
    tensor = InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [RequestedOutput(name, parameters={"binary_data": binary}) for name in OUTPUTS]
    return InferRequest(model_name=model, infer_inputs=[tensor], request_outputs=outputs,
                        parameters={"seed": seed, "samples": samples})  # fmt: skip


def _values(response) -> dict[str, list]:
    values = {}
    for output in response.outputs:
        array = output.as_numpy()
        if output.datatype == "BYTES":
            array = np.array([v.decode() if isinstance(v, bytes) else v for v in array.ravel()])
        values[output.name] = array.tolist()
    return values


async def main(url: str, model: str, pixels: np.ndarray, seed: int, samples: int) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    try:
        seen = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
        }
        for name, binary in (("json", False), ("binary", True)):
            request = _request(model, pixels, seed, samples, binary)
            seen[name] = _values(await client.infer(url, request, model_name=model))
    finally:
        await client.close()
    return seen


if __name__ == "__main__":
    base, name, path, seed_text, samples_text = sys.argv[1:6]
    answer = asyncio.run(main(base, name, np.load(path), int(seed_text), int(samples_text)))
    print(json.dumps(answer))
