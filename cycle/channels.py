"""The delivery channel of an area, checked against what the registry allows (§ 51).

Plain code (no Airflow import): the single-municipality setting `AMS_CHANNEL_AREA<N>` (read by
plugins/ams_reporting/hooks.py) and a tenant's `channels` entry (cycle/tenants.py) go through the
same rule, `resolve_channel`: only areas 1 and 2 may use the file channel; areas 3, 4 and 5 are web
service only (§§ 17, 22, 28, stk. 2).
"""

from __future__ import annotations

from transforms.registry import AREAS, SFTP, WEBSERVICE, get_area

CHANNEL_NAMES = {WEBSERVICE: "web service", SFTP: "SFTP file (§ 51)"}
_ALIASES = {"webservice": WEBSERVICE, "web-service": WEBSERVICE, "web_service": WEBSERVICE, "sftp": SFTP}


class ChannelNotAllowed(ValueError):
    """The configured delivery channel is unknown, or the regulation does not allow it for the area."""


def resolve_channel(area_number: int, raw: str | None, setting: str, unset_hint: str | None = None) -> str:
    """The channel `raw` names for the area (empty or None: web service), if the registry allows it.

    `setting` names where the value came from (an environment variable, a tenants-file field), so the
    message says what to change; `unset_hint` is how to go back to the default."""
    area = get_area(area_number)
    raw = (raw or "").strip()
    channel = _ALIASES.get(raw.lower().replace(" ", ""), None) if raw else WEBSERVICE
    if channel is None:
        raise ChannelNotAllowed(f"{setting}={raw!r} is not a delivery channel; use 'webservice' or 'sftp'")
    if channel not in area.channels:
        allowed = " or ".join(CHANNEL_NAMES[c] for c in area.channels)
        only = f"may only be delivered by {allowed}"
        where = area.channels_paragraph
        file_areas = " and ".join(str(a.number) for a in AREAS if SFTP in a.channels)
        hint = unset_hint or f"Unset {setting} or set it to 'webservice'."
        raise ChannelNotAllowed(
            f"area {area.number} ({area.key}) {only}{f' ({where})' if where else ''}; {setting}={raw!r} is not "
            f"allowed: the file channel (§ 51) is for areas {file_areas} only. {hint}")
    return channel
