"""API keys, roles and per-key rate limits.

Keys come from GRADER_API_KEYS ("role:key,..." or "role:sha256:<hex digest>,..."); when unset,
keys are generated on first start, printed once, and only their SHA-256 digests are kept in
data_dir/api_keys.json. The service holds digests only: a presented key is hashed and compared
with every known digest in constant time, and a key is named in logs, claims and pages by its
fingerprint (``k-`` + 8 hex digits of its digest), never by its value."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from .errors import Forbidden, RateLimited, Unauthenticated

ROLES = ("camera", "inspector", "trainer", "admin")

#: keys given in GRADER_API_KEYS must be at least this long (generated keys have 32 characters)
MIN_KEY_LENGTH = 20


@dataclass(frozen=True)
class Principal:
    role: str
    key_id: str  # the key's fingerprint: loggable, reveals nothing of the key


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(key_digest: str) -> str:
    return "k-" + key_digest[:8]


@dataclass
class KeyRing:
    """Known keys as (digest, role). ``lookup`` touches every entry whatever the key, so the time
    it takes says nothing about how close a guess came."""

    entries: list[tuple[bytes, str]] = field(default_factory=list)

    def add(self, role: str, key_digest: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {ROLES}")
        self.entries.append((bytes.fromhex(key_digest), role))

    def lookup(self, key: str) -> Principal | None:
        d = hashlib.sha256(key.encode()).digest()
        found: Principal | None = None
        for known, role in self.entries:
            if hmac.compare_digest(known, d) and found is None:
                found = Principal(role=role, key_id=fingerprint(d.hex()))
        return found

    def __len__(self) -> int:
        return len(self.entries)


def parse_api_keys(raw: str) -> KeyRing:
    """ "camera:abc...,inspector:sha256:<hex>" -> KeyRing. Raises ValueError naming a bad entry
    (by its role only: a key never appears in an error message)."""
    ring = KeyRing()
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        role, sep, key = entry.partition(":")
        role, key = role.strip(), key.strip()
        if key.startswith("sha256:"):
            hexd = key.removeprefix("sha256:").lower()
            if role not in ROLES or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
                raise ValueError(f"GRADER_API_KEYS entry for {role!r}: expected role:sha256:<64 hex digits> with role in {ROLES}")
            ring.add(role, hexd)
            continue
        if not sep or role not in ROLES or len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"GRADER_API_KEYS entry {role!r}...: expected role:key with role in {ROLES} and a key of >= {MIN_KEY_LENGTH} characters"
            )
        ring.add(role, digest(key))
    if not ring:
        raise ValueError("GRADER_API_KEYS holds no keys")
    return ring


def _write_keys_file(path: Path, digests: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": "sha256", "keys": digests}, indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)


def new_keys(path: Path) -> dict[str, str]:
    """Generate one key per role, keep their digests in ``path`` (replacing any there) and return
    the keys themselves: the only time they exist in plain text."""
    keys = {role: secrets.token_urlsafe(24) for role in ROLES}
    _write_keys_file(path, [{"role": r, "sha256": digest(k), "id": fingerprint(digest(k))} for r, k in keys.items()])
    return keys


def load_or_create_keys(raw: str | None, data_dir: Path) -> tuple[KeyRing, Path | None, dict[str, str]]:
    """(the key ring, the file it lives in or None when from the env, keys generated just now)."""
    if raw:
        return parse_api_keys(raw), None, {}
    path = Path(data_dir) / "api_keys.json"
    fresh: dict[str, str] = {}
    if not path.exists():
        fresh = new_keys(path)
    stored = json.loads(path.read_text())
    if stored.get("format") != "sha256":  # an older file with plain keys: keep the keys, store digests only
        entries = [{"role": r, "sha256": digest(k), "id": fingerprint(digest(k))} for r, k in stored.items()]
        _write_keys_file(path, entries)
        stored = {"keys": entries}
    ring = KeyRing()
    for e in stored["keys"]:
        ring.add(e["role"], e["sha256"])
    return ring, path, fresh


class RateLimiter:
    """A token bucket per key: ``per_min`` requests a minute on average, bursts up to 10 seconds'
    worth. Per process (each replica counts its own). 0 turns it off."""

    def __init__(self, per_min: int) -> None:
        self.rate = per_min / 60.0
        self.capacity = max(1.0, self.rate * 10)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 when admitted, else the seconds until the key may try again."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate


class AuthFailureLimiter:
    """A token bucket of failed authentications per client address: ``burst`` wrong keys at once,
    then ``per_min`` a minute. While an address's bucket is empty every request from it is
    refused (429) before its key is even looked at, so a guess can be neither confirmed nor
    refuted. Per process. A burst of 0 turns it off."""

    def __init__(self, burst: int, per_min: int, max_addresses: int = 100_000) -> None:
        self.capacity, self.rate = float(burst), per_min / 60.0
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def blocked_for(self, address: str) -> float:
        """0 when the address may try a key, else seconds until it may."""
        if self.capacity <= 0:
            return 0.0
        with self._lock:
            tokens = self._tokens(address, time.monotonic())
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.rate if self.rate > 0 else 3600.0

    def failed(self, address: str) -> None:
        if self.capacity <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.max_addresses:  # many addresses: forget the ones that refilled
                self._buckets = {a: v for a, v in self._buckets.items() if self._tokens(a, now) < self.capacity}
            self._buckets[address] = (max(0.0, self._tokens(address, now) - 1.0), now)


#: where the gate (service/gate.py) leaves the principal it authenticated, in the ASGI scope
PRINCIPAL_SCOPE_KEY = "grader.principal"


def require(*roles: str):
    """A dependency admitting the given roles (admin is always admitted), within the key's rate.
    The gate in front of the app has already checked the key from the request's headers, before
    any of the body was read (it finds the roles on the dependency's ``roles``); this is the same
    check again, next to the route it guards."""
    allowed = set(roles) | {"admin"}

    def dependency(request: Request) -> Principal:
        checked = request.scope.get(PRINCIPAL_SCOPE_KEY)
        if checked is not None:
            if checked.role not in allowed:
                raise Forbidden(f"role {checked.role!r} may not do this (needs one of {sorted(allowed)})")
            return checked
        key = request.headers.get("x-api-key")
        if not key:
            raise Unauthenticated("missing X-API-Key header")
        ctx = request.app.state.ctx
        principal = ctx.api_keys.lookup(key)
        if principal is None:
            raise Unauthenticated("unknown API key")
        wait = ctx.rate_limiter.take(principal.key_id)
        if wait > 0:
            raise RateLimited(
                f"key {principal.key_id} is over its limit of {ctx.settings.rate_limit_per_min} requests a minute; retry in {wait:.1f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if principal.role not in allowed:
            raise Forbidden(f"role {principal.role!r} may not do this (needs one of {sorted(allowed)})")
        return principal

    dependency.roles = frozenset(allowed)  # type: ignore[attr-defined]
    return dependency
