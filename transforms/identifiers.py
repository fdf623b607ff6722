"""Danish identifier rules (DOMAIN.md, "Identifiers") and the masking of CPR numbers.

Each check returns a short status code rather than raising, so a whole column can be classified
and every failing row kept with its reason. python-stdnum does the date and century logic.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

from stdnum.dk import cpr as stdnum_cpr
from stdnum.dk import cvr as stdnum_cvr
from stdnum.exceptions import ValidationError

UNKNOWN_CPR = "0000000000"  # the agency's "required but unknown" (STAR service documentation)

_CPR_FORMAT = re.compile(r"^\d{6}-?\d{4}$")
_DIGITS = {8: re.compile(r"^[1-9]\d{7}$"), 10: re.compile(r"^\d{10}$")}
_CVR_WEIGHTS = (2, 7, 6, 5, 4, 3, 2, 1)
_CPR_WEIGHTS = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)

# CPR statuses. "valid" and "no_modulus11" pass; "unknown" is a finding of its own; the rest are errors.
CPR_VALID = "valid"
CPR_NO_MODULUS11 = "no_modulus11"  # valid: issued without a check digit since 1 October 2007 (cpr.dk)
CPR_UNKNOWN = "unknown"
CPR_MISSING = "missing"
CPR_BAD_FORMAT = "bad_format"
CPR_BAD_DATE = "bad_date"  # the birth date or the century does not exist


def normalise_cpr(value: object) -> str | None:
    """Digits only (DDMMYYSSSS), or None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or text.lower() in ("nan", "none", "<na>"):
        return None
    return text.replace("-", "")


_CPR_WRITTEN = re.compile(r"\s*(\d{6})-?(\d{4})\s*")


def canonical_cpr(text: str) -> str:
    """DDMMYYSSSS for a CPR number written `DDMMYY-SSSS` or with surrounding spaces; any other text
    unchanged (the contract's `format.cpr` then reports it). The mapping applies this once, so the
    contract and the data-quality suite see the same value."""
    m = _CPR_WRITTEN.fullmatch(text)
    return m.group(1) + m.group(2) if m else text


@lru_cache(maxsize=200_000)
def cpr_status(value: str | None) -> str:
    """Classify a CPR number; see the CPR_* constants."""
    if value is None or value == "":
        return CPR_MISSING
    if not _CPR_FORMAT.match(value):
        return CPR_BAD_FORMAT
    digits = value.replace("-", "")
    if digits == UNKNOWN_CPR:
        return CPR_UNKNOWN
    try:
        stdnum_cpr.get_birth_date(digits)
    except ValidationError:
        return CPR_BAD_DATE
    if cpr_weighted_residue(digits) != 0:
        return CPR_NO_MODULUS11
    return CPR_VALID


def cpr_weighted_residue(digits: str) -> int:
    """The modulus-11 check's weighted sum of the leading digits given (all ten: 0 when the check passes)."""
    return sum(w * int(d) for w, d in zip(_CPR_WEIGHTS, digits, strict=False)) % 11


def cpr_birth_date(value: str) -> date | None:
    try:
        return stdnum_cpr.get_birth_date(value.replace("-", ""))
    except (ValidationError, ValueError):
        return None


def mask_cpr(value: object) -> str:
    """The only form of a CPR number that may leave the source, payload and archive: DDMMYY-****."""
    digits = normalise_cpr(value)
    if digits is None:
        return "(none)"
    if len(digits) == 10 and digits.isdigit():
        return f"{digits[:6]}-****"
    return "(malformed)"


#: A CPR number as it may appear inside free text: 10 digits, or 6 + 4 with a hyphen or a space.
_CPR_IN_TEXT = re.compile(r"(?<!\d)\d{6}[- ]?\d{4}(?!\d)")


def _mask_match(match: re.Match) -> str:
    digits = match.group(0).replace(" ", "").replace("-", "")
    return match.group(0) if digits == UNKNOWN_CPR else mask_cpr(digits)  # "unknown" is no person


def mask_cpr_in_text(text: str | None) -> str | None:
    """Free text (a finding's message, a receiver's error text, a log line) with every CPR-shaped
    number (10 digits, or 6 + 4 with a hyphen or a space) masked to DDMMYY-****. The one masking of
    free text: the state store, the client's messages, the alerts and the report pages all use it."""
    if text is None:
        return None
    return _CPR_IN_TEXT.sub(_mask_match, str(text))


def is_valid_cvr(value: str | None) -> bool:
    """8 digits, no leading zero, weights 2,7,6,5,4,3,2,1, sum divisible by 11 (erhvervsstyrelsen.dk)."""
    if value is None or not _DIGITS[8].match(value):
        return False
    ok = sum(w * int(d) for w, d in zip(_CVR_WEIGHTS, value, strict=True)) % 11 == 0
    # stdnum agrees; asserting keeps the two implementations honest in tests.
    return ok and stdnum_cvr.is_valid(value)


def cvr_status(value: str | None) -> str:
    if value is None or value == "":
        return "missing"
    if not re.fullmatch(r"\d{8}", value) or value[0] == "0":
        return "bad_format"
    return "valid" if is_valid_cvr(value) else "bad_checksum"


def pnr_status(value: str | None) -> str:
    """P-number: 10 digits; format only (a series was issued with wrong check weights)."""
    if value is None or value == "":
        return "missing"
    return "valid" if _DIGITS[10].match(value) else "bad_format"


def se_status(value: str | None) -> str:
    """SE number: 8 digits. The CVR checksum on SE numbers is unverified: a failure is a warning."""
    if value is None or value == "":
        return "missing"
    if not re.fullmatch(r"\d{8}", value):
        return "bad_format"
    return "valid" if is_valid_cvr(value) else "no_modulus11"


def make_cvr(stem: str) -> str | None:
    """Complete a 7-digit stem into a valid CVR number, or None when no check digit fits."""
    total = sum(w * int(d) for w, d in zip(_CVR_WEIGHTS[:7], stem, strict=True))
    check = (-total) % 11
    return None if check == 10 else stem + str(check)
