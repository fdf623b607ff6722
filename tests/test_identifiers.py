"""Identifier rules (DOMAIN.md): property tests against independent constructions."""

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st
from stdnum.dk import cpr as stdnum_cpr

from transforms import identifiers as ids


def _century_digit(year: int, rnd: int) -> int:
    """A 7th digit that puts `year` in the right century (cpr.dk)."""
    if 1900 <= year <= 1999:
        return rnd % 4  # 0-3: 1900s
    if 2000 <= year <= 2036:
        return 4 if rnd % 2 else 9
    raise ValueError(year)


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2036, 12, 31)), st.integers(0, 999), st.integers(0, 9))
def test_constructed_cpr_numbers_are_valid_with_or_without_modulus_11(birth, serial, rnd):
    digit7 = _century_digit(birth.year, rnd)
    number = f"{birth:%d%m}{birth.year % 100:02d}{digit7}{serial:03d}"
    status = ids.cpr_status(number)
    assert status in (ids.CPR_VALID, ids.CPR_NO_MODULUS11)  # modulus 11 is never an error (since 2007)
    assert ids.cpr_birth_date(number) == birth
    assert ids.cpr_status(f"{number[:6]}-{number[6:]}") == status  # the hyphen is allowed
    weighted = sum(w * int(d) for w, d in zip((4, 3, 2, 7, 6, 5, 4, 3, 2, 1), number, strict=True))
    assert (status == ids.CPR_VALID) == (weighted % 11 == 0)


@given(st.integers(1, 12), st.integers(0, 99), st.text("0123456789", min_size=4, max_size=4))
def test_impossible_days_are_bad_dates(month, yy, rest):
    number = f"32{month:02d}{yy:02d}{rest}"
    assert ids.cpr_status(number) == ids.CPR_BAD_DATE


def test_february_29th_only_in_leap_years():
    assert ids.cpr_status("2902000000") == ids.CPR_BAD_DATE  # digit 7 = 0: 1900, not a leap year
    assert ids.cpr_birth_date("2902004000") == date(2000, 2, 29)  # digit 7 = 4: 2000, a leap year


def test_special_values():
    assert ids.cpr_status("0000000000") == ids.CPR_UNKNOWN
    assert ids.cpr_status(None) == ids.CPR_MISSING
    assert ids.cpr_status("12345") == ids.CPR_BAD_FORMAT
    assert ids.cpr_status("1313901234") == ids.CPR_BAD_DATE  # month 13


@given(st.text("0123456789", min_size=10, max_size=10))
def test_cpr_status_agrees_with_stdnum_on_dates(number):
    """Our status and python-stdnum agree on which numbers have a real birth date."""
    if number == ids.UNKNOWN_CPR:
        return
    try:
        stdnum_cpr.get_birth_date(number)
        real = True
    except Exception:
        real = False
    assert (ids.cpr_status(number) != ids.CPR_BAD_DATE) == real


@given(st.text("0123456789", min_size=10, max_size=10))
def test_masking_keeps_no_serial_digits(number):
    masked = ids.mask_cpr(number)
    assert masked == f"{number[:6]}-****"
    assert number[6:] not in masked.replace("-", "")[6:]


@given(st.integers(1_000_000, 9_999_999))
def test_make_cvr_gives_valid_numbers(stem):
    cvr = ids.make_cvr(str(stem))
    if cvr is None:  # no check digit fits this stem (remainder 10)
        return
    assert ids.is_valid_cvr(cvr) and ids.cvr_status(cvr) == "valid"
    wrong = cvr[:7] + str((int(cvr[7]) + 1) % 10)
    assert ids.cvr_status(wrong) == "bad_checksum"


def test_cvr_examples_and_formats():
    assert ids.cvr_status("13748136") == "valid"  # DOMAIN.md's example
    assert ids.cvr_status("03748136") == "bad_format"  # no leading zero
    assert ids.cvr_status("1374813") == "bad_format"
    assert ids.cvr_status(None) == "missing"


@given(st.text("0123456789", min_size=0, max_size=12))
def test_pnr_is_format_only(value):
    assert (ids.pnr_status(value) == "valid") == (len(value) == 10)


def test_se_checksum_is_only_a_warning_status():
    assert ids.se_status("13748136") == "valid"
    assert ids.se_status("13748137") == "no_modulus11"
    assert ids.se_status("1374813x") == "bad_format"


def test_dates_after_2036_with_digit_4_are_1900s():
    assert ids.cpr_birth_date("0101374000") == date(1937, 1, 1)
    assert date(1937, 1, 1) - timedelta(days=1) == date(1936, 12, 31)
