"""HealthImaging's DICOMweb endpoint as the STOW-RS landing uses it: store a
study's instances (STOW-RS), and find which of them a study holds (QIDO-RS),
on one signed session whose connections are kept alive between requests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote

import requests

from config.clients import dicomweb_endpoint
from config.sigv4 import signed_session
from tasks.backoff import exponential, jittered
from tasks.stow_body import Body
from tasks.stow_response import NOT_TAKEN

DICOM_JSON = "application/dicom+json"
# UIDs per search: a list of 40 keeps the URL near 2.6 kB.
_UIDS_PER_SEARCH = 40
_WARNING_REASON = "00081196"
_SOP_INSTANCE = "00080018"
_SEARCH_ATTEMPTS = 5


class SearchFailed(Exception):
    """QIDO-RS would not answer; the message says what it said last."""


@dataclass
class StowClient:
    """One run's way to the DICOMweb endpoint. ``timeout`` is (connect,
    read): the read timeout is how long a request may go without an answer
    (a large request is answered only once it is stored), after which its
    answer counts as lost."""

    endpoint: str
    session: requests.Session
    timeout: tuple[float, float] = (10.0, 900.0)

    @classmethod
    def for_environment(cls, connections: int) -> StowClient:
        """On the endpoint and credentials the AWS variables give, keeping
        ``connections`` connections alive (one per request in flight)."""
        return cls(dicomweb_endpoint(), signed_session(connections))

    def study_url(self, datastore_id: str, study_instance_uid: str) -> str:
        return (f"{self.endpoint}/datastore/{quote(datastore_id, safe='')}"
                f"/studies/{quote(study_instance_uid, safe='')}")

    def store(self, url: str, body: Body) -> requests.Response:
        """POST the body (StoreDICOMStudy). Raises what requests raises when
        no answer comes (a timeout, a reset)."""
        return self.session.post(
            url, data=body.file, timeout=self.timeout,
            headers={"Content-Type": body.content_type, "Accept": DICOM_JSON,
                     "Content-Length": str(body.length), "X-Amz-Content-SHA256": body.sha256})

    def warnings_of_stored(
        self, datastore_id: str, study_instance_uid: str, sop_instance_uids: Iterable[str],
        sleep: Callable[[float], object] = time.sleep,
    ) -> dict[str, int | None]:
        """Of these instances of the study, those its primary image sets hold
        (QIDO-RS sees no other), with the WarningReason each was stored with.

        Raises:
            SearchFailed: the search was refused, or throttled past the retries.
        """
        url = f"{self.study_url(datastore_id, study_instance_uid)}/instances"
        uids = sorted(set(sop_instance_uids))
        found: dict[str, int | None] = {}
        for start in range(0, len(uids), _UIDS_PER_SEARCH):
            params = {"SOPInstanceUID": ",".join(uids[start:start + _UIDS_PER_SEARCH]),
                      "includefield": _WARNING_REASON, "limit": "1000"}
            for item in self._search(url, params, sleep):
                uid, warning = _first(item, _SOP_INSTANCE), _first(item, _WARNING_REASON)
                if isinstance(uid, str) and uid:
                    found[uid] = warning if isinstance(warning, int) else None
        return found

    def _search(
        self, url: str, params: dict[str, str], sleep: Callable[[float], object]
    ) -> list[dict[str, object]]:
        for attempt in range(_SEARCH_ATTEMPTS):
            response = self.session.get(url, params=params, headers={"Accept": DICOM_JSON},
                                        timeout=(self.timeout[0], 120.0))
            if response.status_code == 204:
                return []
            if response.status_code == 200:
                items = response.json()
                return [item for item in items if isinstance(item, dict)]
            if response.status_code not in NOT_TAKEN and response.status_code < 500:
                break
            sleep(jittered(exponential(attempt, 1.0, 30.0)))
        raise SearchFailed(f"QIDO-RS {url} answered {response.status_code}: "
                           f"{response.text[:200]}")


def _first(item: dict[str, object], tag: str) -> object:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None
