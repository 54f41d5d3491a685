"""HTTP Message Signatures (RFC 9421), the subset AudioHook uses: HMAC-SHA256 over covered components.

    check = SignatureCheck(secret_for=lambda keyid: ..., nonces=NonceCache())
    check.verify(headers, derived)  # raises SignatureError naming what is wrong

`Signature-Input: sig1=("@request-target" "@authority" "x-api-key" ...);keyid="K";nonce="N";
alg="hmac-sha256";created=T;expires=T2` and `Signature: sig1=:BASE64:` (RFC 9421 section 4). The
signature base (section 2.5) is one line per covered component, `"name": value`, then
`"@signature-params": ` and the re-serialised inner list with its parameters. Checks: algorithm, a key
for `keyid`, `created` not in the future and not too old, `expires` not past (3 s of clock skew), the
nonce not seen before within its lifetime, the HMAC (constant-time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

CLOCK_SKEW_S = 3.0
MAX_AGE_S = 60.0
MAX_NONCES = 100_000


class SignatureError(Exception):
    """The request's signature is missing, malformed, expired, replayed or wrong."""


_TOKEN = r"[A-Za-z*][A-Za-z0-9_\-.:%*/]*"
_STRING = r'"(?:[^"\\]|\\.)*"'
_ITEM = re.compile(rf"\s*({_STRING}|-?\d+|{_TOKEN}|:[A-Za-z0-9+/=]*:|\?[01])")
_KEY = re.compile(r"\s*([a-z*][a-z0-9_\-.*]*)")


@dataclass(frozen=True)
class InnerList:
    """A parsed `("a" "b");k=v;...` member: the covered components and the parameters, in order."""

    items: tuple[str, ...]
    params: tuple[tuple[str, str | int], ...]

    def serialise(self) -> str:
        """The canonical text (RFC 8941 section 4.1.1), as the signature base needs it."""
        items = " ".join(_string(i) for i in self.items)
        params = "".join(f";{k}={_string(v) if isinstance(v, str) else v}" for k, v in self.params)
        return f"({items}){params}"


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare(text: str) -> str | int:
    if text.startswith('"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def parse_signature_input(header: str) -> dict[str, InnerList]:
    """The members of a `Signature-Input` dictionary; raises SignatureError when malformed."""
    out: dict[str, InnerList] = {}
    rest = header.strip()
    while rest:
        key = _KEY.match(rest)
        if key is None or not rest[key.end() :].lstrip().startswith("=("):
            raise SignatureError("Signature-Input is not a dictionary of inner lists")
        rest = rest[key.end() :].lstrip()[2:]
        items: list[str] = []
        while not rest.lstrip().startswith(")"):
            item = _ITEM.match(rest)
            if item is None or not item.group(1).startswith('"'):
                raise SignatureError("Signature-Input lists components as strings")
            items.append(str(_bare(item.group(1))))
            rest = rest[item.end() :]
        rest = rest.lstrip()[1:]
        params: list[tuple[str, str | int]] = []
        while rest.startswith(";"):
            name = _KEY.match(rest[1:])
            if name is None or not rest[1 + name.end() :].startswith("="):
                raise SignatureError("malformed Signature-Input parameter")
            rest = rest[1 + name.end() + 1 :]
            value = _ITEM.match(rest)
            if value is None:
                raise SignatureError("malformed Signature-Input parameter value")
            params.append((name.group(1), _bare(value.group(1).strip())))
            rest = rest[value.end() :]
        out[key.group(1)] = InnerList(tuple(items), tuple(params))
        rest = rest.strip()
        if rest.startswith(","):
            rest = rest[1:].strip()
        elif rest:
            raise SignatureError("malformed Signature-Input")
    return out


def parse_signature(header: str) -> dict[str, bytes]:
    """The byte sequences of a `Signature` dictionary (`label=:BASE64:`)."""
    out: dict[str, bytes] = {}
    for member in header.split(","):
        label, sep, value = member.strip().partition("=")
        value = value.strip()
        if not sep or not (value.startswith(":") and value.endswith(":") and len(value) >= 2):
            raise SignatureError("Signature is not a dictionary of byte sequences")
        try:
            out[label.strip()] = base64.b64decode(value[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("Signature holds invalid base64") from None
    return out


def signature_base(covered: InnerList, components: Mapping[str, str]) -> str:
    """The text that is signed (RFC 9421 section 2.5); `components` holds every covered value."""
    lines = []
    for name in covered.items:
        if name not in components:
            raise SignatureError(f"the signature covers {name!r}, which the request lacks")
        lines.append(f"{_string(name)}: {components[name]}")
    lines.append(f'"@signature-params": {covered.serialise()}')
    return "\n".join(lines)


def sign(
    secret: bytes, covered: InnerList, components: Mapping[str, str], label: str = "sig1"
) -> dict[str, str]:
    """The `Signature-Input` and `Signature` header values for a request (clients and tests)."""
    digest = hmac.new(secret, signature_base(covered, components).encode(), hashlib.sha256).digest()
    return {
        "Signature-Input": f"{label}={covered.serialise()}",
        "Signature": f"{label}=:{base64.b64encode(digest).decode()}:",
    }


class NonceCache:
    """Nonces seen, each until its signature could no longer be accepted (bounded)."""

    def __init__(self, limit: int = MAX_NONCES) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str, until: float, now: float) -> bool:
        """Record `nonce`; False when it was seen already (a replay)."""
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = until
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True


@dataclass
class SignatureCheck:
    """Verifies one signature of a request; `secret_for(keyid)` gives the key bytes, or None."""

    secret_for: Callable[[str], bytes | None]
    nonces: NonceCache
    required: tuple[str, ...] = ()
    clock: Callable[[], float] = time.time

    def verify(self, headers: Mapping[str, str], derived: Mapping[str, str]) -> str:
        """Check the request's first signature; returns its keyid. `headers` keys are lower case,
        `derived` holds `@request-target`, `@authority` and the like."""
        raw_input, raw_signature = headers.get("signature-input"), headers.get("signature")
        if not raw_input or not raw_signature:
            raise SignatureError("the request is not signed (Signature-Input and Signature headers)")
        inputs, signatures = parse_signature_input(raw_input), parse_signature(raw_signature)
        label, covered = next(iter(inputs.items()))
        if label not in signatures:
            raise SignatureError(f"no Signature for label {label!r}")
        params = dict(covered.params)
        if params.get("alg", "hmac-sha256") != "hmac-sha256":
            raise SignatureError(f"unsupported signature algorithm {params.get('alg')!r}")
        missing = [c for c in self.required if c not in covered.items]
        if missing:
            raise SignatureError(f"the signature does not cover {', '.join(missing)}")
        keyid, nonce = params.get("keyid"), params.get("nonce")
        created, expires = params.get("created"), params.get("expires")
        if not isinstance(keyid, str) or not isinstance(nonce, str) or not nonce:
            raise SignatureError("the signature needs keyid and nonce parameters")
        if not isinstance(created, int) or (expires is not None and not isinstance(expires, int)):
            raise SignatureError("created (and expires) must be integers")
        now = self.clock()
        if created > now + CLOCK_SKEW_S:
            raise SignatureError("the signature was created in the future")
        if created + MAX_AGE_S < now - CLOCK_SKEW_S or (expires is not None and expires < now - CLOCK_SKEW_S):
            raise SignatureError("the signature has expired")
        secret = self.secret_for(keyid)
        components = {**{k.lower(): v.strip() for k, v in headers.items()}, **derived}
        expected = hmac.new(
            secret or b"\0", signature_base(covered, components).encode(), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(expected, signatures[label]) or secret is None:
            raise SignatureError("the signature does not match")
        until = (expires if expires is not None else created + MAX_AGE_S) + CLOCK_SKEW_S
        if not self.nonces.add(nonce, until, now):
            raise SignatureError("the signature's nonce was used before (a replay)")
        return keyid
