"""Every rendering of every ci values set passes `kubernetes-validate --strict` for Kubernetes 1.30-1.35."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.support.helm import CI_VALUES, ci_id

KUBERNETES_VERSIONS = [f"1.{minor}.0" for minor in range(30, 36)]


def test_installed_kubernetes_validate_knows_these_versions() -> None:
    from kubernetes_validate.utils import all_versions

    known = set(all_versions())
    assert {v for v in KUBERNETES_VERSIONS} <= known, sorted(known)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_renders_validate_strictly(values_file: Path, render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render(values_file=values_file)
    assert docs
    errors = []
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{version} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at "
                              f"{'.'.join(str(p) for p in exc.path)}")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_an_unknown_field() -> None:
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}, "bogus": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)
