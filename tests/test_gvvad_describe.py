"""GV-VAD description repository: element lists, pairing, determinism, cleaning, fallback."""
import json

import pytest

from generation.gvvad import describe


@pytest.fixture(scope="module")
def lists():
    return describe.load_element_lists("ucf_crime")


def test_shipped_classes_are_the_ucf_crime_anomaly_classes(lists, annotations_dir):
    """The 13 classes of the element lists are exactly those of the real UCF-Crime annotation file."""
    lines = (annotations_dir / "ucf" / "UCF_Annotation.txt").read_text().split("\n")
    real = {line.split()[2] for line in lines if line.strip()} - {"Normal"}
    assert set(lists["classes"]) == real
    assert len(real) == 13


def test_sampling_is_deterministic_and_cycles_through_classes(lists):
    first = describe.sample_elements(lists, 26, seed=3)
    assert first == describe.sample_elements(lists, 26, seed=3)
    assert first != describe.sample_elements(lists, 26, seed=4)
    names = [e.anomaly_class for e in first]
    assert names[:13] == sorted(lists["classes"]) and names[13:] == names[:13]
    for e in first:
        entry = lists["classes"][e.anomaly_class]
        assert e.location in entry["locations"] and e.subject in entry["subjects"]
        assert e.event in entry["events"] and e.viewpoint in lists["viewpoints"]


TINY = describe.DescribeSettings(num_pairs=4, llm="tiny", max_new_tokens=12, batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("describe") / "descriptions.jsonl"
    describe.run_describe(TINY, elements="ucf_crime", out=str(out))
    return out


def test_pairs_share_viewpoint_location_subject_and_differ_in_event(tiny_repository):
    records = [json.loads(line) for line in tiny_repository.read_text().splitlines()]
    assert len(records) == 8
    pairs = {}
    for record in records:
        pairs.setdefault(record["pair_id"], {})[record["kind"]] = record
    assert len(pairs) == 4
    for pair in pairs.values():
        abnormal, normal = pair["abnormal"], pair["normal"]
        for key in ("viewpoint", "location", "subject", "pair_class"):
            assert abnormal[key] == normal[key]
        assert abnormal["event"] != normal["event"]
        assert (abnormal["label"], normal["label"]) == (1, 0)
        assert abnormal["anomaly_class"] == abnormal["pair_class"] != "normal"
        assert normal["anomaly_class"] == "normal"
        assert abnormal["event"] in abnormal["prompt"] and normal["event"] in normal["prompt"]
        assert abnormal["text"].strip() and normal["text"].strip()
        assert abnormal["llm"] == "tiny"


def test_rebuilding_gives_the_same_repository(tiny_repository, tmp_path):
    again = tmp_path / "again.jsonl"
    describe.run_describe(TINY, elements="ucf_crime", out=str(again))
    assert again.read_text() == tiny_repository.read_text()


def test_existing_output_is_kept_unless_overwritten(tiny_repository):
    before = tiny_repository.stat().st_mtime_ns
    describe.run_describe(describe.DescribeSettings(num_pairs=1, llm="tiny"), elements="ucf_crime",
                          out=str(tiny_repository))
    assert tiny_repository.stat().st_mtime_ns == before


def test_empty_llm_answers_fall_back_to_the_template(lists):
    tuples = describe.sample_elements(lists, 2)
    records = describe.build_repository(tuples, lambda prompts: ["  \n"] * len(prompts), llm_name="mute")
    assert all(r["fallback"] for r in records)
    assert records[0]["text"] == describe.template_description(tuples[0], "abnormal")
    assert tuples[0].event in records[0]["text"] and tuples[0].normal_event in records[1]["text"]


def test_answers_are_cleaned_to_one_sentence_line():
    assert describe.clean_description('\n\nDescription: "A man runs."\nSecond line') == "A man runs."
    assert describe.clean_description("1. A car crashes.") == "A car crashes."
    assert describe.clean_description(" ".join(["word"] * 100), max_words=5) == "word word word word word"
    assert describe.clean_description("   ") == ""


def test_bad_element_files_name_the_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"viewpoints": ["cctv"], "normal_events": ["walking"],
                                "classes": {"Arson": {"locations": ["shop"], "subjects": [],
                                                      "events": ["fire"]}}}))
    with pytest.raises(ValueError, match=r"bad.json: field 'classes.Arson.subjects'"):
        describe.load_element_lists(path)
    with pytest.raises(FileNotFoundError, match="ucf_crime"):
        describe.load_element_lists("no_such_dataset")
    with pytest.raises(ValueError, match="unknown classes"):
        describe.sample_elements(describe.load_element_lists("ucf_crime"), 1, classes=["Jaywalking"])
