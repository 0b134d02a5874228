"""Basic auth against bcrypt hashes: checked in constant cost per failure, cached on success,
and run in a small thread pool with bounded pending checks (the event loop never runs bcrypt).

* Unknown users are checked against a dummy hash of the highest configured cost, and wrong
  passwords of cheaper hashes are padded with it: a failure costs the same for every user
  name, so timing does not tell which users exist.
* A success is cached (a sha256 of user, password and hash), so repeated scrapes do not pay
  bcrypt's cost; concurrent first checks of the same credentials run bcrypt once.
* At most MAX_AUTH_PENDING checks are queued or running, MAX_AUTH_PENDING_PER_CLIENT of them
  from one client address (the caller answers 429 beyond).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

# loaded with the first users (_bcrypt_lib): without basic auth the serving process spares it
bcrypt: Any = None

MAX_AUTH_PENDING = 8  # bcrypt checks queued or running in the pool (2 threads); 429 beyond
MAX_AUTH_PENDING_PER_CLIENT = 4  # of those, from one client address


def _bcrypt_lib() -> Any:
    """The bcrypt module, imported on first need (users configured)."""
    global bcrypt
    if bcrypt is None:
        import bcrypt as lib

        bcrypt = lib
    return bcrypt


class BasicAuth:
    """The users of a web config (user -> bcrypt hash) and the cache of passed logins."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users: dict[str, bytes] = {user: h.encode("ascii") for user, h in users.items()}
        costs = [int(h[4:6]) for h in self._users.values()]
        if costs:
            _bcrypt_lib()
        self._dummy = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(max(costs))) if costs else b""
        self._dummy_cost = max(costs, default=0)
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}
        self._inflight: dict[bytes, threading.Lock] = {}

    @property
    def required(self) -> bool:
        return bool(self._users)

    def check(self, authorization_header: str | None) -> bool:
        """Check an ``Authorization`` header: True when no users are configured."""
        if not self._users:
            return True
        creds = parse_basic(authorization_header)
        if creds is None:
            return False
        user, password = creds
        stored = self._users.get(user)
        known = stored is not None
        if stored is None:
            stored = self._dummy  # the same bcrypt time for unknown users; never matches
        digest = _digest(user, password, stored)
        if known and self._cached(user, digest):
            return True
        with self._lock:
            flight = self._inflight.setdefault(digest, threading.Lock())
        try:
            with flight:
                if known and self._cached(user, digest):
                    return True
                ok = self._bcrypt(password, stored)
                if ok and known:
                    with self._lock:
                        self._cache[user] = digest
                return ok and known
        finally:
            with self._lock:
                self._inflight.pop(digest, None)

    def _bcrypt(self, password: str, stored: bytes) -> bool:
        try:
            ok = bcrypt.checkpw(password.encode("utf-8"), stored)
        except ValueError:
            ok = False
        if not ok and int(stored[4:6]) < self._dummy_cost:
            bcrypt.checkpw(password.encode("utf-8"), self._dummy)  # pad to the most
        return ok

    def check_cached(self, authorization_header: str | None) -> bool:
        """True without bcrypt when no users are configured or these credentials passed before."""
        if not self._users:
            return True
        creds = parse_basic(authorization_header)
        if creds is None:
            return False
        user, password = creds
        stored = self._users.get(user)
        return stored is not None and self._cached(user, _digest(user, password, stored))

    def _cached(self, user: str, digest: bytes) -> bool:
        with self._lock:
            cached = self._cache.get(user)
        return cached is not None and hmac.compare_digest(cached, digest)


def _digest(user: str, password: str, stored: bytes) -> bytes:
    """The cache key of a login: a sha256 of user, password and the stored hash."""
    key = b"\0".join((user.encode("utf-8"), password.encode("utf-8"), stored))
    return hashlib.sha256(key).digest()


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) of a ``Basic`` Authorization header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


class PendingChecks:
    """bcrypt checks in a pool of two threads, at most MAX_AUTH_PENDING queued or running and
    MAX_AUTH_PENDING_PER_CLIENT from one address, so a flood of wrong passwords cannot queue
    a correct one behind minutes of checks (the caller answers 429 at once instead)."""

    def __init__(self) -> None:
        self.pending = 0
        self.pending_by: dict[str, int] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="auth")

    def admit(self, peer: str) -> bool:
        """A place for one more check from ``peer``; False when there is none."""
        mine = self.pending_by.get(peer, 0)
        if self.pending >= MAX_AUTH_PENDING or mine >= MAX_AUTH_PENDING_PER_CLIENT:
            return False
        self.pending += 1
        self.pending_by[peer] = mine + 1
        return True

    def _done(self, peer: str) -> None:
        self.pending -= 1
        left = self.pending_by[peer] - 1
        if left:
            self.pending_by[peer] = left
        else:
            del self.pending_by[peer]

    async def run(
        self, check: Callable[[str | None], bool], header: str | None, peer: str
    ) -> bool | None:
        """Run an admitted check in the pool; None when the pool is shutting down. Its place
        is given back when the check ends, not when the client goes: a check that has
        started runs on after a client hangs up (one not started yet is dropped)."""
        try:
            job = self._pool.submit(check, header)
        except RuntimeError:  # shutting down
            self._done(peer)
            return None
        loop = asyncio.get_running_loop()

        def done(_job: concurrent.futures.Future[bool]) -> None:
            try:
                loop.call_soon_threadsafe(self._done, peer)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass

        job.add_done_callback(done)
        return await asyncio.wrap_future(job, loop=loop)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
