"""Keyed hashes of deleted data: what the ledger keeps instead of the data it erased.

A deletion ledger must answer "was this request applied?", "does a new request touch a
pair deleted before?" and "does this file still hold a deleted pair?" — none of which
needs the raw (user, item) pairs. It keeps HMAC-SHA256 digests under a per-deployment
secret instead:

    pair digest  = HMAC(secret, "pair:<user>:<item>")     (32 bytes)
    user digest  = HMAC(secret, "user:<user>")             (32 bytes)
    key id       = HMAC(secret, "tru-dist ledger key id")[:8], hex — names the secret in receipts
    receipt seal = HMAC(secret, "receipt:" + canonical JSON of the receipt without its seal), hex
                   — what makes an edited receipt detectable (:mod:`tru_dist.unlearn.ledger`)

Without the secret a digest reveals nothing (ids are small integers, so an UNKEYED hash
could be inverted by enumeration; the key is what prevents that). With it, a candidate
pair found in an artifact is hashed and looked up — how :mod:`tru_dist.unlearn.verify`
scans. The secret comes from, in order:

1. ``TRU_DIST_LEDGER_SECRET`` — the secret itself (any string of >= 16 characters);
2. ``TRU_DIST_LEDGER_SECRET_FILE`` — a file holding it;
3. ``$XDG_CONFIG_HOME/tru-dist/ledger-secret`` (default ``~/.config/tru-dist/ledger-secret``),
   created on first use with 32 random bytes (hex) and mode 0600.

A secret file readable by group or others is refused (as ssh refuses such a key). Every
machine that writes or checks one deployment's ledgers must use the same secret: a ledger
written under another key is refused by key id, never silently misread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import numpy as np

from tru_dist.errors import ConfigError

SECRET_ENV = "TRU_DIST_LEDGER_SECRET"
SECRET_FILE_ENV = "TRU_DIST_LEDGER_SECRET_FILE"
DIGEST_DTYPE = "S32"
_MIN_SECRET = 16


def default_secret_path() -> Path:
    """``$XDG_CONFIG_HOME/tru-dist/ledger-secret`` (``~/.config`` when XDG_CONFIG_HOME is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tru-dist" / "ledger-secret"


def _read_secret_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"ledger secret file {path} is readable by others (mode {mode:04o}); "
                              f"run `chmod 600 {path}`")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"ledger secret file {path} cannot be read ({exc.strerror}); "
                          f"fix its permissions or set {SECRET_ENV}") from None
    if len(text) < _MIN_SECRET:
        raise ConfigError(f"ledger secret in {path} is shorter than {_MIN_SECRET} characters; "
                          "write a longer random secret there (e.g. `openssl rand -hex 32`)")
    return text.encode()


def _create_secret_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def ledger_secret() -> bytes:
    """The deployment's ledger secret (see the module docstring for where it comes from)."""
    value = os.environ.get(SECRET_ENV)
    if value is not None:
        if len(value.strip()) < _MIN_SECRET:
            raise ConfigError(f"{SECRET_ENV} is shorter than {_MIN_SECRET} characters; "
                              "set it to a long random secret (e.g. `openssl rand -hex 32`)")
        return value.strip().encode()
    file = os.environ.get(SECRET_FILE_ENV)
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ConfigError(f"{SECRET_FILE_ENV}={file} does not name a file; create it "
                              "(`openssl rand -hex 32 > FILE; chmod 600 FILE`) or unset the variable")
        return _read_secret_file(path)
    path = default_secret_path()
    if not path.exists():
        _create_secret_file(path)
    return _read_secret_file(path)


class KeyedHasher:
    """HMAC-SHA256 digests of pairs and users under one secret."""

    def __init__(self, secret: bytes | None = None):
        self._secret = ledger_secret() if secret is None else secret
        self.key_id = hmac.new(self._secret, b"tru-dist ledger key id", hashlib.sha256).hexdigest()[:16]

    def _digest(self, msg: bytes) -> bytes:
        return hmac.digest(self._secret, msg, "sha256")

    def pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``S32`` digests of (user, item) pairs, in input order."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.empty(len(users), dtype=DIGEST_DTYPE)
        for k, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
            out[k] = self._digest(b"pair:%d:%d" % (u, i))
        return out

    def requests(self, table) -> dict[str, str]:
        """{request_id: hex digest of what it asks for}: its rows' (user_id, item_id or "all"),
        sorted, under the key — so a replayed request id can be checked to ask for the same
        deletion without the ledger holding raw ids."""
        rows: dict[str, list[str]] = {}
        whole = table["item_id"].isna().to_numpy()
        items = table["item_id"].fillna(-1).astype("int64").to_numpy()
        for rid, u, i, all_items in zip(table["request_id"], table["user_id"], items, whole, strict=True):
            rows.setdefault(str(rid), []).append(f"{int(u)}:{'all' if all_items else int(i)}")
        return {rid: self._digest(("request:" + ",".join(sorted(r))).encode()).hex()[:32]
                for rid, r in rows.items()}

    def receipt_mac(self, canonical: bytes) -> str:
        """The hex HMAC of a receipt's canonical JSON (``receipt:`` prefixed, so a seal is never
        a pair, user or request digest)."""
        return self._digest(b"receipt:" + canonical).hex()

    def users(self, users: np.ndarray) -> np.ndarray:
        """``S32`` digests of user ids, in input order."""
        users = np.asarray(users, dtype=np.int64)
        out = np.empty(len(users), dtype=DIGEST_DTYPE)
        for k, u in enumerate(users.tolist()):
            out[k] = self._digest(b"user:%d" % u)
        return out


def as_digests(arr: np.ndarray) -> np.ndarray:
    """A stored (n, 32) uint8 array as ``S32`` digests (what :func:`to_storable` wrote)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8).reshape(-1, 32)
    return arr.view(DIGEST_DTYPE).reshape(-1)


def to_storable(digests: np.ndarray) -> np.ndarray:
    """``S32`` digests as a sorted, unique (n, 32) uint8 array (an ``S32`` array would drop
    trailing zero bytes in some readers; uint8 round-trips exactly)."""
    uniq = np.unique(np.asarray(digests, dtype=DIGEST_DTYPE))
    return np.frombuffer(uniq.tobytes(), dtype=np.uint8).reshape(-1, 32).copy()
