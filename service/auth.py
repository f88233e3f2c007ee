"""API keys and roles. Keys come from GRADER_API_KEYS ("role:key,..."); when unset, keys are
generated on first start and kept in data_dir/api_keys.json."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from .errors import ApiError

ROLES = ("camera", "inspector", "trainer", "admin")


@dataclass(frozen=True)
class Principal:
    role: str
    key_id: str  # a short, loggable fingerprint of the key


def parse_api_keys(raw: str) -> dict[str, str]:
    """ "camera:abc,inspector:def" -> {key: role}. Raises ValueError naming a bad entry."""
    keys: dict[str, str] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        role, sep, key = entry.partition(":")
        role, key = role.strip(), key.strip()
        if not sep or role not in ROLES or len(key) < 8:
            raise ValueError(f"GRADER_API_KEYS entry {entry.split(':')[0]!r}...: expected role:key with role in {ROLES} and a key of >= 8 characters")
        keys[key] = role
    if not keys:
        raise ValueError("GRADER_API_KEYS holds no keys")
    return keys


def load_or_create_keys(raw: str | None, data_dir: Path) -> tuple[dict[str, str], Path | None]:
    """Keys by value -> role, and the file they were generated into (None when from the env)."""
    if raw:
        return parse_api_keys(raw), None
    path = Path(data_dir) / "api_keys.json"
    if path.exists():
        by_role = json.loads(path.read_text())
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        by_role = {role: secrets.token_urlsafe(24) for role in ROLES}
        path.write_text(json.dumps(by_role, indent=2))
        path.chmod(0o600)
    return {key: role for role, key in by_role.items()}, path


def require(*roles: str):
    """A dependency admitting the given roles (admin is always admitted)."""
    allowed = set(roles) | {"admin"}

    def dependency(request: Request) -> Principal:
        key = request.headers.get("x-api-key")
        if not key:
            raise ApiError(401, "unauthenticated", "missing X-API-Key header", "X-API-Key", {"WWW-Authenticate": "APIKey"})
        role = request.app.state.ctx.api_keys.get(key)
        if role is None:
            raise ApiError(401, "unauthenticated", "unknown API key", "X-API-Key", {"WWW-Authenticate": "APIKey"})
        if role not in allowed:
            raise ApiError(403, "forbidden", f"role {role!r} may not do this (needs one of {sorted(allowed)})")
        return Principal(role=role, key_id=key[:4] + "…")

    return dependency
