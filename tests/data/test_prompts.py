"""Prompt templates: resolution and versioning, strict rendering, readable time, golden rendered samples."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from real_data import require_real_data

from st_instruct.configs import DataConfig
from st_instruct.data.loaders import get_dataset, load_series
from st_instruct.data.registry import DATASETS
from st_instruct.data.stdata import STData
from st_instruct.data.synthetic import generate_synthetic
from st_instruct.samples import builder
from st_instruct.samples.prompts import (
    channels_text,
    dataset_context,
    describe_freq,
    describe_period,
    format_values,
    load_template,
    node_context,
    sensor_kind,
)
from st_instruct.samples.st_tokens import ST_HIS, ST_PRE
from st_instruct.shipped import PROMPTS_ENV, TemplateError, available_templates, prompts_dir

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE_GOLDEN = os.environ.get("ST_INSTRUCT_UPDATE_GOLDEN") == "1"  # rewrite the files instead of comparing

MINIMAL = """{% macro user() %}Hello {{ who }}{% endmacro %}
{% macro assistant() %}{{ pre_slot }}{% endmacro %}
"""


def as_text(sample_id: str, messages: list[dict[str, str]]) -> str:
    parts = [f"# {sample_id}"] + [f"=== {m['role']} ===\n{m['content']}" for m in messages]
    return "\n".join(parts) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert path.is_file(), f"{path} missing; run with ST_INSTRUCT_UPDATE_GOLDEN=1 once and read it"
    assert text == path.read_text()


def window_sample(config: DataConfig, split: str, window: int, sample: int = 0) -> str:
    """Golden text of sample ``sample`` of window ``window`` (index into the split's windows)."""
    plan = builder.plan_source(load_series(config)[0], config)
    columns = builder.sample_columns(plan, split, np.array([window]), load_template(config.template),
                                     config.granularity)
    return as_text(columns["sample_id"][sample], columns["messages"][sample])


# ---------------------------------------------------------------------------------------------------- golden
def test_golden_node_synthetic():
    # test window 0 starts on Wednesday 2024-02-14 19:00 (step 1075) and crosses midnight; zone 7 misses one value
    config = DataConfig(dataset_names=["synthetic-small"], values_in_text=True)
    check_golden("forecast_node_synthetic_small.txt", window_sample(config, "test", 0, sample=7))


def test_golden_graph_synthetic():
    config = DataConfig(dataset_names=["synthetic-small"], granularity="graph", template="forecast_graph",
                        node_sample=4)
    check_golden("forecast_graph_synthetic_small.txt", window_sample(config, "test", 0))


def test_golden_compact_graph_synthetic():
    """The compact graph prompt (issue 10): the same window as forecast_graph's golden sample, its text cut to the
    dataset / city / time line around the ST tokens."""
    config = DataConfig(dataset_names=["synthetic-small"], granularity="graph", template="forecast_graph_compact",
                        node_sample=4)
    text = window_sample(config, "test", 0)
    check_golden("forecast_graph_compact_synthetic_small.txt", text)
    full = window_sample(dataclasses.replace(config, template="forecast_graph"), "test", 0)
    assert len(text) < 0.6 * len(full) and text.count("<st_his>") == full.count("<st_his>") == 4


def test_golden_imputation_synthetic():
    """The imputation templates (issue 25): the pattern in words, the hidden readings NA among the values, the
    whole window asked for."""
    config = DataConfig(dataset_names=["synthetic-small"], task="imputation", horizon=0, missing_pattern="point:0.5",
                        template="impute_node", values_in_text=True)
    text = window_sample(config, "test", 0, sample=7)
    check_golden("impute_node_synthetic_small.txt", text)
    assert "50% of the readings hidden at random" in text and text.count("NA") >= 6
    graph = dataclasses.replace(config, granularity="graph", template="impute_graph", node_sample=4,
                                values_in_text=False, missing_pattern="spin_block")
    check_golden("impute_graph_synthetic_small.txt", window_sample(graph, "test", 0))


@pytest.mark.integration
def test_golden_node_nyc_taxi():
    require_real_data("nyc-taxi")
    # window 175 of 2019 starts on Tuesday 8 January 2019, 07:00; node 0 is Alphabet City
    config = DataConfig(dataset_names=["nyc-taxi"], dataset_start="2019-01-01", dataset_end="2020-01-01")
    check_golden("forecast_node_nyc_taxi.txt", window_sample(config, "train", 175, sample=0))


# ---------------------------------------------------------------------------------------------------- resolution
def test_shipped_templates_resolve_and_have_one_slot_per_node():
    assert {"forecast_node", "forecast_graph", "semantic_node", "bare_node"} <= set(available_templates())
    assert prompts_dir() == Path(__file__).resolve().parents[2] / "prompts"
    config = DataConfig(dataset_names=["synthetic-small"], granularity="graph", template="forecast_graph",
                        node_sample=5)
    plan = builder.plan_source(load_series(config)[0], config)
    for granularity, template, nodes in (("node", "forecast_node", 1), ("graph", "forecast_graph", 5)):
        messages = builder.sample_columns(plan, "train", np.array([0]), load_template(template),
                                          granularity)["messages"][0]
        roles = [m["role"] for m in messages]
        assert roles == ["system", "user", "assistant"]
        user, answer = messages[1]["content"], messages[2]["content"]
        assert (user.count(ST_HIS), user.count(ST_PRE)) == (nodes, 0)
        assert (answer.count(ST_HIS), answer.count(ST_PRE)) == (0, nodes)


# ---------------------------------------------------------------------------------------------------- semantic / bare
SYNTHETIC = ["synthetic", "synthetic-small", "synthetic-large", "synthetic-grid", "synthetic-motorway"]
REAL = ["nyc-taxi", "nyc-bike", "los-loop", "nycbike1-grid", "beijing-air"]
SWITCH = ("semantic_node", "bare_node")  # the UrbanMind description ablation: a recipe switches between the two


def switch_variants(data: STData) -> dict[str, tuple[STData, dict]]:
    """``data`` as the switch must render it: plain, without a calendar, channel-independent, with the values."""
    no_calendar = dataclasses.replace(data, start=None, timestamps=None, no_calendar=True)
    return {"plain": (data, {}), "no calendar": (no_calendar, {}),
            "channel-independent": (data.series_view(), {"channel_independent": True, "scaling": "window"}),
            "values": (data, {"values_in_text": True})}


def check_semantic_and_bare(data: STData) -> None:
    """Both templates render every variant of ``data``: one <st_his> in the user turn, one <st_pre> in the answer,
    the same system turn; semantic_node names the city, the dataset, each facet's channel, unit and sensor kind;
    bare_node names none of them."""
    assert data.sensors and all(data.sensors.get(c) for c in data.channels), "every shipped dataset names its sensors"
    for variant, (series, keys) in switch_variants(data).items():
        rendered = {}
        for name in SWITCH:
            config = DataConfig(dataset_names=[data.name], template=name, node_sample=3, **keys)
            plan = builder.plan_source(series, config)
            rendered[name] = builder.sample_columns(plan, "test", np.array([0]), load_template(name), "node")
            for messages in rendered[name]["messages"]:
                assert [m["role"] for m in messages] == ["system", "user", "assistant"], variant
                user, answer = messages[1]["content"], messages[2]["content"]
                assert (user.count(ST_HIS), user.count(ST_PRE)) == (1, 0), (name, variant)
                assert (answer.count(ST_HIS), answer.count(ST_PRE)) == (0, 1), (name, variant)
                assert ST_HIS not in messages[0]["content"] and ST_PRE not in messages[0]["content"]
        semantic, bare = rendered["semantic_node"], rendered["bare_node"]
        for column in ("node_index", "history", "target"):
            np.testing.assert_array_equal(semantic[column], bare[column])
        for index, sem, plain in zip(semantic["node_index"], semantic["messages"], bare["messages"], strict=True):
            node = node_context(series, int(index[0]))
            assert sem[0] == plain[0], "the system turns must be equal, so that only the description differs"
            user = sem[1]["content"]
            assert f"[City] {data.city}" in user and f"[Dataset] {data.name}" in user and node["label"] in user
            for facet in node["facets"]:
                assert f"[Facet] quantity: {facet['name']}; unit: {facet['unit']}; sensor: {facet['sensor']}" in user
            assert len(node["facets"]) == (1 if variant == "channel-independent" else data.num_channels)
            assert ("(time unknown)" in user) == (variant == "no calendar"), variant
            text = "\n".join(m["content"] for m in plain)
            facts = [data.city, data.name, *data.channels, *filter(None, data.units), *data.sensors.values()]
            if variant != "values":  # the values are numbers, which a node label may be too
                facts.append(node["label"])
            assert not [fact for fact in facts if fact in text], (variant, text)
            if variant == "values":
                assert plain[1]["content"].count("\n") == len(node["facets"]) + 1  # History, Values, one per channel


@pytest.mark.parametrize("name", SYNTHETIC)
def test_semantic_and_bare_templates_render_synthetic_cities(name):
    check_semantic_and_bare(load_series(DataConfig(dataset_names=[name]))[0])


@pytest.mark.integration
@pytest.mark.parametrize("name", REAL)
def test_semantic_and_bare_templates_render_real_datasets(name):
    require_real_data(name)
    check_semantic_and_bare(load_series(DataConfig(dataset_names=[name]))[0])


def test_golden_semantic_and_bare_node_synthetic():
    """The same sample as forecast_node's golden one, through the switch's two sides."""
    for name in SWITCH:
        config = DataConfig(dataset_names=["synthetic-small"], values_in_text=True, template=name)
        check_golden(f"{name}_synthetic_small.txt", window_sample(config, "test", 0, sample=7))


def test_sensor_kind_of_every_dataset_and_user_file(tmp_path):
    for name, spec in DATASETS.items():
        assert len(spec.sensors) == len(spec.channels) and all(spec.sensors), name
    beijing = DATASETS["beijing-air"]
    values = np.zeros((30, 2, len(beijing.channels)), np.float32)
    air = STData(values=values, name="beijing-air", channels=list(beijing.channels), units=list(beijing.units),
                 sensors=dict(zip(beijing.channels, beijing.sensors, strict=True)))
    assert sensor_kind(air) == "air-quality monitoring stations and weather station"
    assert sensor_kind(air.select_channels(["PM2.5"])) == "air-quality monitoring stations"
    assert dataset_context(air.select_channels(["TEMP"]), 12, 12, False)["channels"] == [
        {"name": "TEMP", "unit": "degC", "sensor": "weather station"}]
    view = air.select_channels(["PM2.5", "TEMP"]).series_view()
    assert sensor_kind(view) == "air-quality monitoring stations and weather station"
    assert [node_context(view, i)["facets"] for i in (0, 3)] == [
        [{"name": "PM2.5", "unit": "ug/m3", "sensor": "air-quality monitoring stations"}],
        [{"name": "TEMP", "unit": "degC", "sensor": "weather station"}]]
    assert sensor_kind(generate_synthetic("motorway", num_steps=48)) == "simulated sensors"
    renamed = get_dataset("synthetic-small", channel_names=["arrivals", "departures"])
    assert renamed.sensors == {"arrivals": "simulated sensors", "departures": "simulated sensors"}
    # a user's file says nothing of its sensors: no sensor kind, and the semantic prompt leaves the field out
    path = tmp_path / "mine.npz"
    np.savez(path, data=np.arange(800, dtype=np.float32).reshape(200, 4, 1))
    mine = get_dataset(path, freq="1h", series_start="2024-01-01")
    assert mine.sensors == {} and sensor_kind(mine) == ""
    config = DataConfig(dataset_names=[str(path)], template="semantic_node", dataset_freq="1h",
                        dataset_series_start="2024-01-01", node_sample=1, split="6:2:2")
    messages = builder.sample_columns(builder.plan_source(mine, config), "test", np.array([0]),
                                      load_template("semantic_node"), "node")["messages"][0]
    assert "[Facet] quantity: ch0\n" in messages[1]["content"] and "sensor" not in messages[1]["content"]
    assert "[City] unknown" in messages[1]["content"]


def test_the_profile_carries_the_sensor_kinds_to_a_forecast_input():
    """A forecast input of the training dataset gets its sensor kinds from the profile, as it gets its city: the
    semantic prompt of a forecast reads as training's did. A profile written before them still loads."""
    import json

    from st_instruct.data.profile import _check_profile, data_profile
    from st_instruct.inference import _complete

    data = get_dataset("synthetic-small")
    profile = json.loads(json.dumps(data_profile(data, DataConfig(dataset_names=["synthetic-small"]))))
    _check_profile("synthetic-small", profile, None, None)
    raw = STData(values=data.values[:48], name="input", freq="1h", start=data.start)
    assert _complete(raw, profile).sensors == data.sensors == {"inflow": "simulated sensors",
                                                               "outflow": "simulated sensors"}
    older = {k: v for k, v in profile.items() if k not in ("sensors", "node_units")}
    _check_profile("synthetic-small", older, None, None)
    assert _complete(raw, older).sensors == {}
    with pytest.raises(ValueError, match="sensors"):
        _check_profile("synthetic-small", {**profile, "sensors": ["simulated sensors"]}, None, None)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


def test_version_pinning_with_env_dir(tmp_path, monkeypatch):
    write(tmp_path, "greet.v1.jinja", MINIMAL)
    write(tmp_path, "greet.v2.jinja", MINIMAL.replace("Hello", "Hi"))
    write(tmp_path, "notes.txt", "not a template")
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    assert available_templates() == {"greet": [1, 2]}
    latest, pinned = load_template("greet"), load_template("greet@1")
    assert (latest.name, latest.version, pinned.version) == ("greet", 2, 1)
    assert (latest.spec, pinned.spec) == ("greet@2", "greet@1")
    context = {"who": "you", "pre_slot": "<p>"}
    assert latest.render(context) == [{"role": "user", "content": "Hi you"}, {"role": "assistant", "content": "<p>"}]
    assert pinned.render(context)[0]["content"] == "Hello you"
    by_path = load_template(str(tmp_path / "greet.v1.jinja"))
    assert by_path.render(context) == pinned.render(context)
    assert by_path.spec == str((tmp_path / "greet.v1.jinja").resolve())


def test_unknown_template_lists_available(tmp_path, monkeypatch):
    write(tmp_path, "greet.v1.jinja", MINIMAL)
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    with pytest.raises(TemplateError, match=r"unknown prompt template 'forecats'.*greet \(versions 1\)"):
        load_template("forecats")
    with pytest.raises(TemplateError, match=r"has no version 3.*greet \(versions 1\)"):
        load_template("greet@3")
    with pytest.raises(TemplateError, match="does not exist"):
        load_template(str(tmp_path / "missing.jinja"))


def test_undefined_variable_names_template_and_variable(tmp_path):
    path = write(tmp_path, "bad.v1.jinja", MINIMAL.replace("{{ who }}", "{{ who }} from {{ cty }}"))
    with pytest.raises(TemplateError) as err:
        load_template(path).render({"who": "you", "pre_slot": ""})
    message = str(err.value)
    assert str(path) in message and "'cty'" in message and "line 1" in message
    attr = write(tmp_path, "attr.v1.jinja", MINIMAL.replace("{{ who }}", "{{ node.nmae }}"))
    with pytest.raises(TemplateError, match=r"attr\.v1\.jinja.*undefined variable 'nmae'"):
        load_template(attr).render({"node": {"name": "x"}, "pre_slot": ""})


def test_template_without_user_macro_and_syntax_error(tmp_path):
    path = write(tmp_path, "half.v1.jinja", "{% macro assistant() %}x{% endmacro %}")
    with pytest.raises(TemplateError, match=r"half\.v1\.jinja defines no macro user\(\)"):
        load_template(path).render({})
    broken = write(tmp_path, "broken.v1.jinja", "{% macro user() %}{{ x {% endmacro %}")
    with pytest.raises(TemplateError, match=r"broken\.v1\.jinja line 1"):
        load_template(broken)


# ---------------------------------------------------------------------------------------------------- text
@pytest.mark.parametrize(("start", "steps", "freq", "expected"), [
    ("2019-01-08 07:00", 12, "1h", "Tuesday, 8 January 2019, 07:00 to 18:00, hourly"),
    ("2019-01-08 19:00", 12, "1h", "Tuesday, 8 January 2019, 19:00 to Wednesday, 9 January 2019, 06:00, hourly"),
    ("2012-03-07 23:30", 12, "5min", "Wednesday, 7 March 2012, 23:30 to Thursday, 8 March 2012, 00:25, "
                                     "every 5 minutes"),
    ("2024-01-01", 4, "7D", "Monday, 1 January 2024 to Monday, 22 January 2024, weekly"),
    ("2024-02-28", 3, "1D", "Wednesday, 28 February 2024 to Friday, 1 March 2024, daily"),
    ("2019-01-08 07:00", 1, "1h", "Tuesday, 8 January 2019, 07:00, hourly"),
    ("2019-01-08 07:00:30", 2, "30s", "Tuesday, 8 January 2019, 07:00:30 to 07:01:00, every 30 seconds"),
])
def test_describe_period(start, steps, freq, expected):
    assert describe_period(pd.Timestamp(start), steps, freq) == expected


def test_describe_period_without_calendar_and_freq_text():
    assert describe_period(None, 12, "7D", first_step=100) == "steps 100 to 111 (time unknown), weekly"
    assert describe_period(None, 1, "1h") == "step 0 (time unknown), hourly"
    assert describe_period(None, 2, None) == "steps 0 to 1 (time unknown), at an unknown interval"
    assert [describe_freq(f) for f in ("5min", "1h", "2h", "1D", "7D", "1min", "15s")] == [
        "every 5 minutes", "hourly", "every 2 hours", "daily", "weekly", "every minute", "every 15 seconds"]


def test_channels_text_and_values_text():
    assert channels_text(["inflow", "outflow"], ["trips/hour"] * 2) == "inflow and outflow (trips/hour)"
    assert channels_text(["PM2.5", "TEMP", "x"], ["ug/m3", "degC", ""]) == "PM2.5 (ug/m3), TEMP (degC) and x"
    values = np.array([1.26, -0.04, np.nan, 3.0, 7.0])
    observed = np.array([True, True, False, True, False])
    assert format_values(values, observed, 1).tolist() == ["1.3", "0.0", "NA", "3.0", "NA"]
    assert format_values(values, observed, 0).tolist() == ["1", "0", "NA", "3", "NA"]


def test_node_context_names_and_locations():
    grid = generate_synthetic("grid", num_steps=48)
    assert node_context(grid, 11)["location"] == "row 1, column 3"
    small = generate_synthetic("small", num_steps=48)
    node = node_context(small, 2)
    assert node["label"] == node["name"] == small.node_names[2] and node["location"] == ""
    nameless = generate_synthetic("small", num_steps=48)
    nameless.node_names = None
    assert node_context(nameless, 4)["label"] == "node 4"


# ---------------------------------------------------------------------------------------------------- sandbox
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ joiner.__init__.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "{{ lipsum.__globals__.__builtins__.open('MARKER', 'w').write('x') }}",
    "{{ namespace.__init__.__globals__.__builtins__.__import__('subprocess').run(['touch', 'MARKER']) }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ config.__class__.__init__.__globals__['os'].system('touch MARKER') }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "{{ open('MARKER', 'w').write('x') }}",
    "{{ __builtins__.open('MARKER', 'w') }}",
    "{{ (who|attr('__class__')).__mro__ }}",
    "{{ '{0.__class__.__mro__}'.format(who) }}",
    "{% set _ = channels.append(1) %}{{ channels }}",
    "{{ range(10**9)|list|length }}",
]


@pytest.mark.parametrize("expression", ESCAPES)
def test_crafted_template_cannot_reach_os_subprocess_or_files(tmp_path, expression):
    marker = tmp_path / "marker"
    path = write(tmp_path, "evil.v1.jinja", MINIMAL.replace("Hello {{ who }}", expression.replace("MARKER",
                                                                                                 str(marker))))
    context = {"who": "you", "pre_slot": "", "channels": [1]}
    try:
        messages = load_template(path).render(context)
    except TemplateError as err:  # refused: the message names the template file
        assert str(path) in str(err)
    else:  # rendered harmlessly: nothing of Python's internals in the text
        assert "<class" not in messages[0]["content"] and "module" not in messages[0]["content"]
    assert not marker.exists() and context == {"who": "you", "pre_slot": "", "channels": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.v1.jinja"]


def test_shipped_templates_are_trusted_and_other_paths_are_not(tmp_path, monkeypatch):
    from st_instruct.shipped import is_trusted_template, resolve_template

    assert is_trusted_template(resolve_template("forecast_node"))
    outside = write(tmp_path, "mine.v1.jinja", MINIMAL)
    assert not is_trusted_template(outside)
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path))
    assert is_trusted_template(outside) and is_trusted_template(resolve_template("forecast_node@1", ROOT_PROMPTS))


ROOT_PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


def test_model_template_prefers_trusted_then_checked_copy(tmp_path):
    import hashlib

    from st_instruct.model_dir import TEMPLATE_COPY_FILE, model_template

    shipped = ROOT_PROMPTS / "forecast_node.v1.jinja"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    recipe = tmp_path / "recipe.yaml"
    assert model_template(recipe, "forecast_node", digest) == shipped
    own = write(tmp_path, TEMPLATE_COPY_FILE, MINIMAL)
    own_digest = hashlib.sha256(own.read_bytes()).hexdigest()
    assert model_template(recipe, "/elsewhere/custom.jinja", own_digest) == own
    own.write_text(MINIMAL + " ")
    with pytest.raises(TemplateError, match="the folder was altered"):
        model_template(recipe, "/elsewhere/custom.jinja", own_digest)
    with pytest.raises(TemplateError, match=f"without template_sha256.*{digest}"):
        model_template(recipe, "forecast_node", None)
