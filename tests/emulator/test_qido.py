"""QIDO-RS against the local service: signed searches of studies, series and
instances, on image sets that import jobs made
(tests.emulator.dicomweb_store)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.dicomweb_http import signed_session
from tests.emulator.conftest import wait_for
from tests.emulator.dicomweb_store import WARNING, DicomWebStore, served_store
from tests.emulator.test_import import dicom_bytes, run_import, small_series

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
# PS3.18 Table 6.7.1-2a, study level, that the test studies have values for.
STUDY_DEFAULTS = {"00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
                  "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010",
                  "00201206", "00201208"}

# One worker runs them all: the data store they share is filled once.
pytestmark = pytest.mark.xdist_group("dicomweb-qido")


@pytest.fixture(scope="module")
def store() -> Iterator[DicomWebStore]:
    with served_store() as filled:
        yield filled


def search(store: DicomWebStore, path: str, **params: Any) -> list[dict[str, Any]]:
    response = store.get(store.base() + path, **params)
    if response.status_code == 204:
        assert response.content == b""
        return []
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    found: list[dict[str, Any]] = response.json()
    return found


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] if "Value" in r[tag] else None for r in results]


def study_of(store: DicomWebStore, name: str) -> str:
    return str(store.sources[name].StudyInstanceUID)


def studies(store: DicomWebStore, **params: Any) -> set[str]:
    return set(values(search(store, "/studies", **params), STUDY_UID))


# -- studies -------------------------------------------------------------------


def test_studies_carry_the_default_attributes(store: DicomWebStore) -> None:
    results = {r[STUDY_UID]["Value"][0]: r for r in search(store, "/studies")}
    assert set(results) == {study_of(store, n) for n in ("a1", "b1", "rle")}
    study_a = results[study_of(store, "a1")]
    assert set(study_a) >= STUDY_DEFAULTS
    assert study_a["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    # Two series, five instances: the non-primary image set is not counted.
    assert study_a["00201206"] == {"vr": "IS", "Value": [2]}
    assert study_a["00201208"] == {"vr": "IS", "Value": [5]}
    assert study_a["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Holmes^Sherlock"}]}
    assert study_a["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert "00081030" not in study_a  # StudyDescription only when asked for


def test_studies_come_newest_update_first(store: DicomWebStore) -> None:
    latest: dict[str, float] = {}
    summaries = store.mi.search_image_sets(datastoreId=store.datastore_id,
                                           maxResults=50)["imageSetsMetadataSummaries"]
    for summary in summaries:
        if summary["isPrimary"]:
            uid = summary["DICOMTags"]["DICOMStudyInstanceUID"]
            latest[uid] = max(latest.get(uid, 0.0), summary["updatedAt"].timestamp())
    found = values(search(store, "/studies"), STUDY_UID)
    assert found == sorted(latest, key=lambda uid: -latest[uid])
    assert found[0] == study_of(store, "b1")  # its second slice came in a later job


def test_matching_is_exact_and_case_sensitive(store: DicomWebStore) -> None:
    assert studies(store, PatientID="PID-A") == {study_of(store, "a1")}
    assert studies(store, PatientID="pid-a") == set()
    assert studies(store, PatientID="PID") == set()
    assert studies(store, PatientName="Watson^John") == {study_of(store, "b1")}
    assert studies(store, **{"00100020": "PID-B"}) == {study_of(store, "b1")}


def test_wildcards(store: DicomWebStore) -> None:
    a, b = study_of(store, "a1"), study_of(store, "b1")
    assert studies(store, PatientName="Hol*") == {a}
    assert studies(store, PatientName="Wats?n^John") == {b}
    assert studies(store, PatientName="*o*") == {a, b}
    assert studies(store, PatientName="*O*") == set()
    assert studies(store, AccessionNumber="ACC-?") == {a, b}
    assert studies(store, ModalitiesInStudy="M*") == {a}


def test_fuzzy_matching_of_person_names(store: DicomWebStore) -> None:
    assert studies(store, PatientName="sherl", fuzzymatching="true") == {study_of(store, "a1")}
    assert studies(store, PatientName="sherl") == set()


def test_date_and_time_ranges(store: DicomWebStore) -> None:
    a, b, c = (study_of(store, n) for n in ("a1", "b1", "rle"))
    assert studies(store, StudyDate="20200101-20201231") == {a}
    assert studies(store, StudyDate="20210101-") == {b}
    assert studies(store, StudyDate="-20201231") == {a, c}
    assert studies(store, StudyDate="20210620") == {b}
    assert studies(store, StudyTime="1000-1100") == {a}
    assert studies(store, StudyTime="1015") == {a}
    assert studies(store, StudyTime="-0900") == {b}


def test_uid_lists(store: DicomWebStore) -> None:
    a, b = study_of(store, "a1"), study_of(store, "b1")
    assert studies(store, StudyInstanceUID=f"{a},{b}") == {a, b}
    assert studies(store, StudyInstanceUID=f"{a}\\1.2.3") == {a}
    sops = [store.sources[n].SOPInstanceUID for n in ("a2", "mr1")]
    found = search(store, "/instances", SOPInstanceUID=",".join(sops))
    assert sorted(values(found, SOP_UID)) == sorted(sops)


def test_includefield_adds_attributes(store: DicomWebStore) -> None:
    (by_keyword,) = search(store, "/studies", PatientID="PID-A", includefield="StudyDescription")
    assert by_keyword["00081030"] == {"vr": "LO", "Value": ["Chest CT"]}
    (by_tag,) = search(store, "/studies", PatientID="PID-A", includefield="00081030,NoSuchKey")
    assert by_tag == by_keyword
    (everything,) = search(store, "/studies", PatientID="PID-A", includefield="all")
    assert {"00081030", "00100040", "00200010"} <= set(everything)
    sop = store.sources["a2"].SOPInstanceUID
    (instance,) = search(store, "/instances", SOPInstanceUID=sop,
                         includefield="ImagePositionPatient")
    assert instance["00200032"] == {"vr": "DS", "Value": [0, 0, 1]}
    (plain,) = search(store, "/instances", SOPInstanceUID=sop)
    assert "00200032" not in plain


# -- series and instances -----------------------------------------------------------


def test_series_of_a_study_in_series_number_order(store: DicomWebStore) -> None:
    a = store.sources["a1"]
    found = search(store, f"/studies/{a.StudyInstanceUID}/series")
    assert values(found, SERIES_UID) == [a.SeriesInstanceUID,
                                         store.sources["mr1"].SeriesInstanceUID]
    assert values(found, "00080060") == ["CT", "MR"]
    assert values(found, "00201209") == [3, 2]
    assert values(found, "00200011") == [1, 2]
    assert values(search(store, f"/studies/{a.StudyInstanceUID}/series", Modality="MR"),
                  SERIES_UID) == [store.sources["mr1"].SeriesInstanceUID]


def test_all_series_carry_their_study(store: DicomWebStore) -> None:
    found = search(store, "/series")
    assert len(found) == 4
    mr = search(store, "/series", Modality="MR", PatientID="PID-A")
    assert values(mr, "00100020") == ["PID-A"]
    assert values(mr, STUDY_UID) == [study_of(store, "a1")]
    assert STUDY_DEFAULTS - {"00080056"} <= set(mr[0])


def test_instances_of_a_series_in_instance_number_order(store: DicomWebStore) -> None:
    a = store.sources["a1"]
    found = search(store, f"/studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/instances")
    assert values(found, SOP_UID) == [store.sources[n].SOPInstanceUID for n in ("a1", "a2", "a3")]
    assert values(found, "00200013") == [1, 2, 3]
    assert {"00080016", "00280010", "00280011", "00280100", "00081190"} <= set(found[0])
    retrieve = store.http.get(found[0]["00081190"]["Value"][0])
    assert retrieve.status_code == 200, retrieve.text


def test_instances_of_a_study_and_of_the_store(store: DicomWebStore) -> None:
    a = study_of(store, "a1")
    in_study = search(store, f"/studies/{a}/instances")
    assert len(in_study) == 5
    assert {"00080060", SERIES_UID} <= set(in_study[0])  # the series level too
    every = search(store, "/instances")
    assert len(every) == 8  # 5 of A, 2 of B, 1 of C
    assert {"00100020", "00080060"} <= set(every[0])


def test_non_primary_image_sets_are_searched_only_when_named(store: DicomWebStore) -> None:
    conflict = store.sources["conflict"].SOPInstanceUID
    assert conflict not in values(search(store, "/instances"), SOP_UID)
    named = search(store, "/instances", imageSetId=store.non_primary_set)
    assert values(named, SOP_UID) == [conflict]
    assert values(named, "00100020") == ["SOMEONE-ELSE"]
    url = named[0]["00081190"]["Value"][0]
    assert url.endswith(f"?imageSetId={store.non_primary_set}")
    assert store.http.get(url).status_code == 200


def test_warnings_are_searchable(store: DicomWebStore) -> None:
    b1 = store.sources["b1"].SOPInstanceUID
    for code in (str(WARNING), hex(WARNING)):
        found = search(store, "/instances", WarningReason=code)
        assert values(found, SOP_UID) == [b1]
        assert found[0]["00081196"] == {"vr": "US", "Value": [WARNING]}
    assert search(store, "/instances", WarningReason="1") == []


# -- paging ---------------------------------------------------------------------


def test_limit_and_offset_page_through_without_overlap(store: DicomWebStore) -> None:
    every = values(search(store, "/instances"), SOP_UID)
    pages = [values(search(store, "/instances", limit=2, offset=offset), SOP_UID)
             for offset in range(0, len(every) + 2, 2)]
    assert [len(p) for p in pages] == [2, 2, 2, 2, 0]
    assert [sop for page in pages for sop in page] == every


@pytest.mark.parametrize("params", [
    {"limit": "1001"}, {"limit": "0"}, {"limit": "ten"}, {"offset": "-1"},
    {"offset": "1000001"}, {"fuzzymatching": "maybe"},
])
def test_bad_paging_is_400(store: DicomWebStore, params: dict[str, str]) -> None:
    assert store.get(store.base() + "/studies", **params).status_code == 400


# -- refusals and empty answers ------------------------------------------------------


@pytest.mark.parametrize(("path", "params"), [
    ("/studies", {"Foo": "1"}),
    ("/studies", {"Modality": "CT"}),  # a series key, not a study key
    ("/studies", {"SOPInstanceUID": "1.2"}),
    ("/series", {"WarningReason": "1"}),
    ("/instances", {"ImagePositionPatient": "0"}),
    ("/studies", {"StudyDate": "2020-2021"}),
    ("/studies", {"StudyDate": "20200101-20200201-20200301"}),
    ("/studies", {"StudyTime": "noon"}),
    ("/instances", {"WarningReason": "many"}),
])
def test_an_unknown_key_or_a_bad_value_is_400(
    store: DicomWebStore, path: str, params: dict[str, str]
) -> None:
    response = store.get(store.base() + path, **params)
    assert response.status_code == 400, response.text
    assert response.json()["message"]


def test_nothing_matching_is_204(store: DicomWebStore) -> None:
    for path in ("/studies", "/series", "/instances"):
        response = store.get(store.base() + path, PatientID="NOBODY")
        assert response.status_code == 204
        assert response.content == b""
    assert store.get(store.base() + "/studies/1.2.3/series").status_code == 204


def test_an_unknown_data_store_is_404(store: DicomWebStore) -> None:
    response = store.get(store.base("0" * 32) + "/studies")
    assert response.status_code == 404
    assert response.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"


# -- the index follows every write ----------------------------------------------


def test_searches_see_new_versions_and_deleted_image_sets(
    service: Any, mi: Any, s3: Any, datastore_id: str
) -> None:
    http = signed_session(service)
    base = f"{service.endpoint}/datastore/{datastore_id}"
    slices = small_series("qido-index", 3)

    def instances() -> list[str]:
        response = http.get(f"{base}/instances")
        return [] if response.status_code == 204 else values(response.json(), SOP_UID)

    run_import(mi, s3, datastore_id, {"s0.dcm": dicom_bytes(slices[0])}, "qido-1/")
    assert instances() == [slices[0].SOPInstanceUID]
    run = run_import(mi, s3, datastore_id,
                     {f"s{i}.dcm": dicom_bytes(slices[i]) for i in (1, 2)}, "qido-2/")
    assert instances() == [slices[i].SOPInstanceUID for i in range(3)]
    image_set_id = run.manifest["imageSetsSummary"][0]["imageSetId"]
    mi.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    wait_for(lambda: mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)[
        "imageSetState"] == "DELETED")
    assert instances() == []
