"""Every YAML document under infra/ is valid for the cluster it is applied to, and names pinned images.

The schemas are vendored in tests/infra/schemas/ (see vendor.py there): RayJob from the KubeRay release that
infra/README.md names, the core kinds from one Kubernetes release. Unknown fields are refused, as
`kubectl apply --validate=strict` and the API server's strict field validation refuse them, so a misspelt
`entrypoint` or a `headGroupSpec` outside `rayClusterSpec` fails here instead of being dropped silently.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERAY_RELEASE = "v1.7.0"
KUBERNETES_RELEASE = "1.34"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# resource.Quantity and intstr.IntOrString take a number or a string in YAML (`nvidia.com/gpu: 1`, `port: 80`)
NUMBER_OR_STRING = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"anyOf": [{"type": "string"}, {"type": "number"}]},
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
}


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties, unless it
    keeps unknown fields on purpose (x-kubernetes-preserve-unknown-fields)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    for key in ("$defs", "definitions"):
        if key in out:
            out[key] = {name: strict(sub) for name, sub in out[key].items()}
    return out


def api_version(gvk: dict[str, str]) -> str:
    return f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]


@cache
def validators() -> dict[tuple[str, str], list[jsonschema.protocols.Validator]]:
    """(apiVersion, kind) -> the validators a document of that kind must pass."""
    kubernetes = json.loads((SCHEMAS / f"kubernetes-{KUBERNETES_RELEASE}.json").read_text())
    definitions = {name: strict(NUMBER_OR_STRING.get(name, schema)) for name, schema in
                   kubernetes["definitions"].items()}

    def definition(name: str) -> jsonschema.protocols.Validator:
        return jsonschema.Draft4Validator({"definitions": definitions, "allOf": [{"$ref": f"#/definitions/{name}"}]})

    found: dict[tuple[str, str], list[jsonschema.protocols.Validator]] = {}
    for name, schema in kubernetes["definitions"].items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            found[(api_version(gvk), gvk["kind"])] = [definition(name)]
    rayjob = json.loads((SCHEMAS / f"kuberay-{KUBERAY_RELEASE}-rayjob.json").read_text())
    # a CRD's schema says only `metadata: {type: object}`; the API server checks it as ObjectMeta
    metadata_only = {"type": "object", "properties": {"metadata": {"$ref": f"#/definitions/{OBJECT_META}"}},
                     "definitions": definitions}
    found[(rayjob["apiVersion"], rayjob["kind"])] = [
        jsonschema.Draft202012Validator(strict(rayjob["schema"])),
        jsonschema.Draft4Validator(metadata_only),
    ]
    return found


def schema_errors(doc: Any) -> list[str]:
    """One line per problem: where in the document, and what."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion/kind)"]
    checks = validators().get((doc["apiVersion"], doc["kind"]))
    if checks is None:
        return [f"no vendored schema for {doc['apiVersion']} {doc['kind']} (see tests/infra/schemas/vendor.py)"]
    errors = [err for check in checks for err in check.iter_errors(doc)]
    return [f"{'.'.join(str(part) for part in err.absolute_path) or '(top)'}: {err.message}" for err in errors]


def manifest_files() -> list[Path]:
    return sorted(INFRA.rglob("*.y*ml"))


def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def name_of(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata") or {}
    return metadata.get("name") or metadata.get("generateName", "") + "*"


def first(path: str, kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for doc in documents(INFRA / path) if doc["kind"] == kind))


def test_manifests_exist():
    names = {path.relative_to(INFRA).as_posix() for path in manifest_files()}
    assert {"kuberay/rayjob-fit.yaml", "kuberay/rayjob-score-nightly.yaml", "kuberay/nightly-cronjob.yaml",
            "mlflow/mlflow-server.yaml"} <= names


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_manifest_matches_its_schema(path: Path):
    docs = documents(path)
    assert docs, f"{path}: no YAML documents"
    problems = [f"{doc.get('kind')} {name_of(doc)}: {line}"
                for doc in docs for line in schema_errors(doc)]
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def _misspelt_entrypoint(job):
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")


def _head_group_outside_cluster_spec(job):
    job["spec"]["headGroupSpec"] = job["spec"]["rayClusterSpec"].pop("headGroupSpec")


def _cluster_spec_under_wrong_key(job):
    job["spec"]["rayCluster"] = job["spec"].pop("rayClusterSpec")


def _replicas_as_text(job):
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"


def _misspelt_container_field(job):
    container = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["imagePullpolicy"] = container.pop("imagePullPolicy")


def _misspelt_label_key(job):
    job["metadata"]["label"] = job["metadata"].pop("labels")


@pytest.mark.parametrize(("mutate", "field"), [
    (_misspelt_entrypoint, "entryPoint"),
    (_head_group_outside_cluster_spec, "headGroupSpec"),
    (_cluster_spec_under_wrong_key, "rayCluster"),
    (_replicas_as_text, "four"),
    (_misspelt_container_field, "imagePullpolicy"),
    (_misspelt_label_key, "label"),
], ids=lambda v: getattr(v, "__name__", "")[1:] or None)
@pytest.mark.parametrize("path", ["kuberay/rayjob-fit.yaml", "kuberay/rayjob-score-nightly.yaml"])
def test_a_broken_rayjob_is_refused(path, mutate, field):
    job = first(path, "RayJob")
    assert schema_errors(job) == []
    mutate(job)
    errors = schema_errors(job)
    assert any(field in line for line in errors), errors


def test_broken_core_kinds_are_refused():
    cronjob = first("kuberay/nightly-cronjob.yaml", "CronJob")
    cronjob["spec"]["schedul"] = cronjob["spec"].pop("schedule")
    assert any("schedule" in line for line in schema_errors(cronjob))   # required, and `schedul` unknown
    deployment = first("mlflow/mlflow-server.yaml", "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    assert any("containerPort" in line for line in schema_errors(deployment))
    config = first("kuberay/rayjob-fit.yaml", "ConfigMap")
    config["data"] = {"fit.yaml": {"normal": "s3://x"}}    # a mapping where Kubernetes wants a string
    assert any("data.fit.yaml" in line for line in schema_errors(config))
    assert schema_errors({"apiVersion": "v1", "kind": "Pod"})[0].startswith("no vendored schema")


# -- images ---------------------------------------------------------------------------------------------------

def image_problem(ref: str) -> str | None:
    """Why an image reference is not pinned by version, or None when it is (a tag other than latest, or a
    digest)."""
    if "@sha256:" in ref:
        return None
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:      # `registry:5000/app` has a colon but no tag
        return f"{ref}: no version tag"
    if tag == "latest":
        return f"{ref}: `latest` is not a version"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        return f"{ref}: `{tag}` is not a tag (an unset build argument?)"
    return None


def manifest_images(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["image"]] if isinstance(node.get("image"), str) else []
        return own + [ref for value in node.values() for ref in manifest_images(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in manifest_images(item)]
    return []


def dockerfile_images(text: str) -> list[str]:
    """The images a Dockerfile builds FROM, with ${ARG} replaced by the ARG's default."""
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    refs = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.M)
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), ref) for ref in refs]


def test_every_image_is_pinned_by_version():
    images = [(path.relative_to(REPO), ref) for path in manifest_files()
              for doc in documents(path) for ref in manifest_images(doc)]
    images += [(path.relative_to(REPO), ref) for path in sorted(INFRA.rglob("Dockerfile*"))
               if not path.name.endswith(".dockerignore") for ref in dockerfile_images(path.read_text())]
    assert any(where.name == "nightly-cronjob.yaml" for where, _ in images)   # the CronJob's kubectl image
    assert any(where.name == "Dockerfile" for where, _ in images)
    problems = [f"{where}: {problem}" for where, ref in images if (problem := image_problem(ref))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("ref", ["alpine/k8s:latest", "alpine/k8s", "registry:5000/app", "ray:${TAG}",
                                 "rayproject/ray"])
def test_an_unpinned_image_is_found(ref):
    cronjob = first("kuberay/nightly-cronjob.yaml", "CronJob")
    cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = ref
    assert any(image_problem(found) for found in manifest_images(cronjob))
    dockerfile = (INFRA / "Dockerfile").read_text().replace("ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu",
                                                            f"ARG BASE_IMAGE={ref}")
    assert any(image_problem(found) for found in dockerfile_images(dockerfile))
