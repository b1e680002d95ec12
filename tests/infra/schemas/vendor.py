"""Rewrite the vendored manifest schemas from upstream files; run by hand when bumping KubeRay or Kubernetes.

    python tests/infra/schemas/vendor.py \
        --rayjob-crd ray-operator/config/crd/bases/ray.io_rayjobs.yaml --kuberay-release v1.7.0 \
        --kubernetes-swagger kubernetes/swagger.json.unprocessed --kubernetes-release 1.34

The RayJob CRD comes from the KubeRay repository at the release tag; the Kubernetes definitions from the
OpenAPI (swagger 2) document that kubernetes-client/python ships for that Kubernetes release. Only what the
manifests under infra/ use is kept (their kinds and the definitions those reach), without descriptions;
subschemas the CRD repeats (the pod template of head, workers and submitter) are stored once under $defs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
INFRA = HERE.parents[2] / "infra"


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: without_descriptions(value) for key, value in node.items() if key != "description"}
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    return node


def large_subschemas(node: Any, key: str, min_chars: int, found: dict[str, list[str]]) -> None:
    """Canonical JSON of every dict subtree of at least min_chars -> the keys it was found under."""
    if isinstance(node, dict):
        text = json.dumps(node, sort_keys=True)
        if len(text) >= min_chars:
            found.setdefault(text, []).append(key)
        for child_key, child in node.items():
            large_subschemas(child, child_key, min_chars, found)
    elif isinstance(node, list):
        for item in node:
            large_subschemas(item, key, min_chars, found)


def replaced(node: Any, text: str, ref: dict[str, str]) -> Any:
    if isinstance(node, dict):
        if json.dumps(node, sort_keys=True) == text:
            return ref
        return {key: replaced(value, text, ref) for key, value in node.items()}
    if isinstance(node, list):
        return [replaced(item, text, ref) for item in node]
    return node


def shared_subschemas(schema: dict[str, Any], min_chars: int = 2000) -> dict[str, Any]:
    """Hoist every large subschema that occurs more than once into $defs (the CRD repeats the pod template
    for the head, the workers and the submitter), largest first; returns the schema with $defs and $refs."""
    defs: dict[str, Any] = {}
    while True:
        found: dict[str, list[str]] = {}
        large_subschemas(schema, "root", min_chars, found)
        large_subschemas(defs, "defs", min_chars, found)
        repeated = [text for text, keys in found.items() if len(keys) > 1]
        if not repeated:
            return {**schema, "$defs": defs} if defs else schema
        text = max(repeated, key=len)
        name = found[text][0]
        while name in defs:
            name += "_"
        ref = {"$ref": f"#/$defs/{name}"}
        schema = replaced(schema, text, ref)
        defs = {key: replaced(value, text, ref) for key, value in defs.items()}
        defs[name] = json.loads(text)


def used_kinds() -> set[tuple[str, str]]:
    """(apiVersion, kind) of every document under infra/."""
    kinds = set()
    for path in sorted(INFRA.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                kinds.add((doc.get("apiVersion"), doc.get("kind")))
    return kinds


def reachable(definitions: dict[str, Any], roots: list[str]) -> list[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        text = json.dumps(definitions[name])
        stack.extend(part.split('"')[0] for part in text.split('"#/definitions/')[1:])
    return sorted(seen)


def vendor_rayjob(crd_path: Path, release: str) -> None:
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    out = {
        "source": f"ray-project/kuberay {release}: ray-operator/config/crd/bases/ray.io_rayjobs.yaml (v1)",
        "apiVersion": f"{crd['spec']['group']}/v1",
        "kind": crd["spec"]["names"]["kind"],
        "schema": shared_subschemas(without_descriptions(version["schema"]["openAPIV3Schema"])),
    }
    (HERE / f"kuberay-{release}-rayjob.json").write_text(json.dumps(out, separators=(",", ":"), sort_keys=True))


def vendor_kubernetes(swagger_path: Path, release: str) -> None:
    definitions = json.loads(swagger_path.read_text())["definitions"]
    wanted = used_kinds()
    roots = [
        name
        for name, schema in definitions.items()
        for gvk in schema.get("x-kubernetes-group-version-kind", [])
        if ((f"{gvk['group']}/" if gvk["group"] else "") + gvk["version"], gvk["kind"]) in wanted
    ]
    names = reachable(definitions, roots + ["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"])
    out = {
        "source": f"Kubernetes {release} OpenAPI definitions (kubernetes-client/python swagger.json.unprocessed)",
        "definitions": {name: without_descriptions(definitions[name]) for name in names},
    }
    (HERE / f"kubernetes-{release}.json").write_text(json.dumps(out, separators=(",", ":"), sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rayjob-crd", type=Path, required=True)
    parser.add_argument("--kuberay-release", required=True)
    parser.add_argument("--kubernetes-swagger", type=Path, required=True)
    parser.add_argument("--kubernetes-release", required=True)
    args = parser.parse_args()
    vendor_rayjob(args.rayjob_crd, args.kuberay_release)
    vendor_kubernetes(args.kubernetes_swagger, args.kubernetes_release)


if __name__ == "__main__":
    main()
