"""`kubectl apply -f` of a render (e.g. `helm template` output) onto the objects a namespace holds, with the
API server's rule that kubectl apply meets on workloads: some fields cannot change once an object exists
(a Job's pod template above all). Helm hooks mean nothing here: apply creates hook objects like any other.

    live = apply(live, Manifests.from_text(helm_template_output))   # ApplyError: as kubectl exits 1

Objects are compared as rendered (the API server compares them after defaulting; the fields checked here
are the ones a chart sets itself). Objects the render lacks stay (apply without --prune).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.system.kubelet import Manifests

# Fields the API server refuses to change on update ("field is immutable"), by kind.
IMMUTABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "Job": (("spec", "template"), ("spec", "selector"), ("spec", "completions"), ("spec", "completionMode")),
    "Deployment": (("spec", "selector"),),
    "DaemonSet": (("spec", "selector"),),
    "StatefulSet": (("spec", "selector"), ("spec", "serviceName"), ("spec", "volumeClaimTemplates"),
                    ("spec", "podManagementPolicy")),
}


class ApplyError(RuntimeError):
    """What `kubectl apply` prints and exits 1 with: one line per refused object."""


def _field(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("namespace", "default"), meta["name"]


def apply(live: Manifests, render: Manifests) -> Manifests:
    """The namespace's objects after applying the render: each rendered object created, or replaced when
    none of its immutable fields change; ApplyError names every object whose immutable fields would change
    (kubectl applies the others and exits 1: a caller treats the apply as failed)."""
    objects = {_key(d): d for d in live.docs}
    errors = []
    for doc in render.docs:
        key = _key(doc)
        old = objects.get(key)
        if old is not None:
            changed = [".".join(p) for p in IMMUTABLE.get(doc["kind"], ()) if _field(old, p) != _field(doc, p)]
            if changed:
                errors.append(f'The {doc["kind"]} "{key[2]}" is invalid: {", ".join(changed)}: field is immutable')
                continue
        objects[key] = copy.deepcopy(doc)
    if errors:
        raise ApplyError("\n".join(errors))
    return Manifests(objects.values())
