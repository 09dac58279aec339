"""Credentials come only from the environment: a credential name X means X_USER and X_PASSWORD."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import NamedTuple

from datasurface.errors import CredentialError

GIT_TOKEN_ENV = "DATASURFACE_GIT_TOKEN"


def env_prefix(name: str) -> str:
    """`merge-db` -> `MERGE_DB`: upper-cased, every character outside [A-Z0-9] becomes `_`."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


class Credential(NamedTuple):  # the model and the job's value classes are NamedTuples: see cli/fast.py
    name: str
    user: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a debug traceback
        return f"Credential(name={self.name!r}, user={self.user!r}, password='***')"


def resolve(name: str, environ: Mapping[str, str] | None = None) -> Credential:
    env = os.environ if environ is None else environ
    prefix = env_prefix(name)
    user_var, password_var = f"{prefix}_USER", f"{prefix}_PASSWORD"
    missing = [v for v in (user_var, password_var) if not env.get(v)]
    if missing:
        raise CredentialError(
            f"credential {name!r}: environment variable(s) {', '.join(missing)} not set"
        )
    return Credential(name=name, user=env[user_var], password=env[password_var])
