"""Instruction prompts for spatio-temporal forecasting: versioned Jinja templates, their context, readable time.

The prompt design follows UrbanGPT (Li et al., "UrbanGPT: Spatio-Temporal Large Language Models", KDD 2024):
the user turn tells the model the city, what is measured (channels and units), the region and the history
period in words, and carries a history slot ``<st_start><st_his><st_end>`` whose ``<st_his>`` position receives
the ST encoder's embedding of the region's history; the assistant turn carries the prediction slot
``<st_start><st_pre><st_end>`` whose hidden state the regression head reads. The graph form (one ``<st_his>`` and
one ``<st_pre>`` per node, all nodes of a window in one sample) follows ST-LLM (Liu et al., "Spatial-Temporal
Large Language Model for Traffic Prediction", MDM 2024).

Templates are files in ``prompts/`` named ``<name>.v<N>.jinja`` (see ``prompts/README.md``). A template defines
the chat turns as Jinja macros ``system()`` (optional), ``user()`` and ``assistant()``; :meth:`PromptTemplate.render`
evaluates the file with a context (:func:`dataset_context` + period text + :func:`node_context`) through
``Template.make_module`` and calls each macro, giving chat ``messages``. Undefined variables are errors
(``jinja2.StrictUndefined``) that name the template file and the variable.

Nothing in a template is executed beyond Jinja expressions: templates render in an
``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no ``str.format`` escapes, no mutation of the
context), so a crafted file cannot reach ``os``, ``subprocess`` or ``open``. Which files may be rendered at all is
decided where the template is named: a recipe *file* may only name templates in :func:`trusted_template_dirs`
(``configs.parse_recipe``; any path given as a ``--template`` flag is the user's own choice), and a saved forecaster
renders only the copy it ships (:data:`TEMPLATE_COPY_FILE`) or a trusted template, whichever matches the
``template_sha256`` of its recipe (:func:`model_template`).
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
import numpy as np
import pandas as pd

from st_instruct.data.stdata import STData
from st_instruct.samples.st_tokens import ST_END, ST_HIS, ST_PRE, ST_START
from st_instruct.shipped import TEMPLATE_NAME_RE, TemplateError, resolve_template

TURNS = ("system", "user", "assistant")
HISTORY_SLOT = f"{ST_START}{ST_HIS}{ST_END}"
PREDICTION_SLOT = f"{ST_START}{ST_PRE}{ST_END}"
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")





def _undefined_name(err: jinja2.UndefinedError) -> str:
    message = str(err)
    match = re.search(r"has no attribute '([^']+)'", message) or re.search(r"'([^']+)' is undefined", message)
    return match[1] if match else message


@dataclass
class PromptTemplate:
    """A loaded template file; :meth:`render` turns a context into chat messages.

    Attributes:
        name / version: from the file name ``<name>.v<version>.jinja`` (version ``None`` for other file names).
        path: the file; source: its text (part of the dataset fingerprint).
        spec: what pins this file: ``"name@version"`` when found in the prompts folder, else the path.
    """

    name: str
    version: int | None
    path: Path
    source: str
    spec: str
    _template: jinja2.Template = field(repr=False)

    def render(self, context: dict[str, Any]) -> list[dict[str, str]]:
        """``[{"role", "content"}, ...]``: the ``system`` (if the template defines it), ``user`` and ``assistant``
        macros, each called with ``context`` and stripped of surrounding whitespace."""
        try:
            module = self._template.make_module(context)
            messages = []
            for role in TURNS:
                macro = getattr(module, role, None)
                if macro is None:
                    if role == "system":
                        continue
                    raise TemplateError(f"prompt template {self.path} defines no macro {role}(); a template needs "
                                        "{% macro user() %} and {% macro assistant() %} (system() is optional)")
                messages.append({"role": role, "content": str(macro()).strip()})
            return messages
        except jinja2.sandbox.SecurityError as err:  # before UndefinedError: an unsafe attribute is both
            raise TemplateError(f"prompt template {self.path}{self._where(err)} tried something the sandbox forbids "
                                f"({err}); templates may only use the context's variables, see prompts/README.md"
                                ) from err
        except jinja2.UndefinedError as err:
            raise TemplateError(
                f"prompt template {self.path}{self._where(err)} uses an undefined variable {_undefined_name(err)!r} "
                f"({err}); the context provides: {', '.join(sorted(context))}") from err
        except jinja2.TemplateError as err:  # a missing include, a sandbox limit (range), ...
            raise TemplateError(f"prompt template {self.path}{self._where(err)}: {err}") from err
        except (ArithmeticError, LookupError, TypeError) as err:  # an expression of the template failed
            raise TemplateError(f"prompt template {self.path}{self._where(err)}: {type(err).__name__}: {err}"
                                ) from err

    def _where(self, err: BaseException) -> str:
        """`` (line N)`` of the template line that raised ``err``, or ``""``."""
        lines = [self._template.get_corresponding_lineno(f.lineno)
                 for f in traceback.extract_tb(err.__traceback__) if f.filename == str(self.path)]
        return f" (line {lines[-1]})" if lines else ""


def load_template(spec: str | os.PathLike, directory: str | os.PathLike | None = None) -> PromptTemplate:
    """Load a template by name (highest version), ``name@N`` or path (see :func:`resolve_template`).

    The environment is sandboxed (``ImmutableSandboxedEnvironment``: see the module docstring), trims block newlines
    (``trim_blocks``, ``lstrip_blocks``), does no HTML escaping and makes undefined variables errors
    (``StrictUndefined``). Which files may be loaded is checked by the callers that know where ``spec`` came from
    (``configs.parse_recipe``, :func:`model_template`).
    """
    path = resolve_template(spec, directory).resolve()
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(path.parent)), undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True, autoescape=False, keep_trailing_newline=False)
    try:
        template = env.get_template(path.name)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"prompt template {path} line {err.lineno}: {err.message}") from err
    except UnicodeDecodeError as err:
        raise TemplateError(f"prompt template {path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    match = TEMPLATE_NAME_RE.match(path.name)
    name = match["name"] if match else path.name.removesuffix(".jinja")
    version = int(match["version"]) if match else None
    by_name = not os.fspath(spec).endswith(".jinja") and version is not None
    return PromptTemplate(name=name, version=version, path=path, source=path.read_text(),
                          spec=f"{name}@{version}" if by_name else str(path), _template=template)


# ---------------------------------------------------------------------------------------------------- model folders
# ---------------------------------------------------------------------------------------------------- time text
def describe_freq(freq: str | None) -> str:
    """Readable interval: ``"1h"`` -> ``"hourly"``, ``"5min"`` -> ``"every 5 minutes"``, ``"7D"`` -> ``"weekly"``;
    ``None`` (unknown step) -> ``"at an unknown interval"``."""
    if freq is None:
        return "at an unknown interval"
    seconds = int(pd.Timedelta(pd.tseries.frequencies.to_offset(freq)).total_seconds())
    single = {604800: "weekly", 86400: "daily", 3600: "hourly", 60: "every minute", 1: "every second"}
    if seconds in single:
        return single[seconds]
    for unit, size in (("weeks", 604800), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0:
            return f"every {seconds // size} {unit}"
    return f"every {seconds} seconds"


def describe_date(ts: pd.Timestamp) -> str:
    """``"Tuesday, 8 January 2019"``."""
    return f"{_DAYS[ts.day_of_week]}, {ts.day} {_MONTHS[ts.month - 1]} {ts.year}"


class PeriodText:
    """Readable text of periods of a series' clock, precomputed per step so a window's text costs a lookup.

    ``PeriodText(timestamps, freq).period(lo, n)`` describes steps ``lo .. lo + n - 1``:
    ``"Tuesday, 8 January 2019, 07:00 to 18:00, hourly"``; across midnight
    ``"Tuesday, 8 January 2019, 19:00 to Wednesday, 9 January 2019, 06:00, hourly"``; daily or coarser steps give
    dates only (``"Monday, 1 January 2024 to Monday, 25 March 2024, weekly"``); one step gives its time only.
    Without a calendar (``timestamps=None``) steps are named by index: ``"steps 100 to 111 (time unknown), weekly"``.
    """

    def __init__(self, timestamps: pd.DatetimeIndex | None, freq: str | None):
        self.freq_text = describe_freq(freq)
        self.timestamps = timestamps
        step = None if freq is None else pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
        self.dates_only = step is not None and step >= pd.Timedelta("1D")
        if timestamps is None:
            self.dates = self.times = None
            return
        if timestamps.tz is not None:  # describe local wall-clock time
            timestamps = timestamps.tz_localize(None)
        unique_days, inverse = np.unique(timestamps.normalize().to_numpy(), return_inverse=True)
        texts = np.array([describe_date(pd.Timestamp(d)) for d in unique_days], dtype=object)
        self.days = inverse  # [T] day id, equal ids = same date
        self.dates = texts[inverse]
        with_seconds = (step is not None and step % pd.Timedelta("1min") != pd.Timedelta(0)) or bool(
            (timestamps.second != 0).any())
        self.times = np.asarray(timestamps.strftime("%H:%M:%S" if with_seconds else "%H:%M"), dtype=object)

    def period(self, lo: int, num_steps: int) -> str:
        hi = lo + num_steps - 1
        if self.dates is None:
            span = f"step {lo} (time unknown)" if num_steps == 1 else f"steps {lo} to {hi} (time unknown)"
        elif self.dates_only:
            span = self.dates[lo] if num_steps == 1 else f"{self.dates[lo]} to {self.dates[hi]}"
        elif num_steps == 1:
            span = f"{self.dates[lo]}, {self.times[lo]}"
        elif self.days[lo] == self.days[hi]:
            span = f"{self.dates[lo]}, {self.times[lo]} to {self.times[hi]}"
        else:
            span = f"{self.dates[lo]}, {self.times[lo]} to {self.dates[hi]}, {self.times[hi]}"
        return f"{span}, {self.freq_text}"


def describe_period(first_timestamp: pd.Timestamp | str | None, num_steps: int, freq: str,
                    first_step: int = 0) -> str:
    """Readable text of ``num_steps`` steps of ``freq`` from ``first_timestamp`` (see :class:`PeriodText`).

    ``first_timestamp=None`` (no calendar) names the steps by index from ``first_step``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, found {num_steps}")
    if first_timestamp is None:
        return PeriodText(None, freq).period(first_step, num_steps)
    index = pd.date_range(pd.Timestamp(first_timestamp), periods=num_steps, freq=freq)
    return PeriodText(index, freq).period(0, num_steps)


# ---------------------------------------------------------------------------------------------------- context
def join_words(items: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``; ``""`` for no items."""
    if not items:
        return ""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def channels_text(channels: list[str], units: list[str]) -> str:
    """``"inflow and outflow (trips/hour)"`` when all units agree, else ``"PM2.5 (ug/m3), TEMP (degC) and ..."``."""
    if len(set(units)) == 1:
        return join_words(list(channels)) + (f" ({units[0]})" if units[0] else "")
    return join_words([f"{c} ({u})" if u else c for c, u in zip(channels, units, strict=True)])


def sensor_kind(data: STData) -> str:
    """What measured the dataset: its channels' distinct ``STData.sensors`` in channel order, joined
    (``"taxi trip records"``, ``"air-quality monitoring stations and weather station"``); a channel-independent view's
    original channels are read (``node_channels``); ``""`` when none is known (a user's file)."""
    channels = data.channels if data.node_channels is None else list(dict.fromkeys(data.node_channels))
    return join_words(list(dict.fromkeys(k for k in (data.sensors.get(c, "") for c in channels) if k)))


def dataset_context(data: STData, history: int, horizon: int, values_in_text: bool) -> dict[str, Any]:
    """Template variables that are the same for every sample of a dataset (see ``prompts/README.md``)."""
    return {
        "dataset": data.name,
        "city": data.city,
        "dataset_description": data.description,
        "channels": [{"name": c, "unit": u, "sensor": data.sensors.get(c, "")}
                     for c, u in zip(data.channels, data.units, strict=True)],
        "sensor_kind": sensor_kind(data),
        "channel_names": channels_text(data.channels, [""] * data.num_channels),
        "channels_text": channels_text(data.channels, data.units),
        "freq": data.freq,
        "freq_text": describe_freq(data.freq),
        "history_steps": history,
        "horizon_steps": horizon,
        "values_in_text": values_in_text,
        "his_slot": HISTORY_SLOT,
        "pre_slot": PREDICTION_SLOT,
        "st_start": ST_START,
        "st_his": ST_HIS,
        "st_pre": ST_PRE,
        "st_end": ST_END,
    }


def node_context(data: STData, index: int) -> dict[str, Any]:
    """``{index, name, description, label, location, facets}`` of node ``index``; unknown text fields are ``""``.

    ``label`` is the name, or ``"node <index>"`` without names; ``location`` is ``"row r, column c"`` on a grid,
    ``"39.9820° N, 116.3970° E"`` for lat/lon coordinates, else ``""``. ``facets``: what the node's series measure,
    ``[{name, unit, sensor}]`` per channel (a channel-independent view's node: its one original channel, from
    ``node_channels`` / ``node_units``). ``history_values`` is added per sample.
    """
    name = data.node_names[index] if data.node_names is not None else ""
    location = ""
    if data.grid_shape is not None:
        row, col = divmod(index, data.grid_shape[1])
        location = f"row {row}, column {col}"
    elif data.coords is not None and data.coord_kind == "latlon":
        lat, lon = data.coords[index]
        location = f"{abs(lat):.4f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.4f}° {'E' if lon >= 0 else 'W'}"
    return {
        "index": int(index),
        "name": name,
        "description": data.node_descriptions[index] if data.node_descriptions is not None else "",
        "label": name or f"node {index}",
        "location": location,
        "facets": node_facets(data, index),
    }


def node_facets(data: STData, index: int) -> list[dict[str, str]]:
    """``[{name, unit, sensor}]``: the channels node ``index``'s values are (:func:`node_context`)."""
    if data.node_channels is not None:
        channel = data.node_channels[index]
        unit = data.node_units[index] if data.node_units is not None else ""
        return [{"name": channel, "unit": unit, "sensor": data.sensors.get(channel, "")}]
    return [{"name": c, "unit": u, "sensor": data.sensors.get(c, "")}
            for c, u in zip(data.channels, data.units, strict=True)]


def format_values(values: np.ndarray, observed: np.ndarray, decimals: int) -> np.ndarray:
    """Strings of ``values`` (any shape) rounded to ``decimals``, ``"NA"`` where not ``observed``; same shape."""
    rounded = np.round(np.nan_to_num(values.astype(np.float64)), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    # series repeat few distinct values (counts, one-decimal readings): format each distinct value once
    unique, inverse = np.unique(rounded.reshape(-1), return_inverse=True)
    digits = max(decimals, 0)
    text = np.array([f"{v:.{digits}f}" for v in unique.tolist()], dtype=object)[inverse.reshape(-1)]
    text = text.reshape(values.shape)
    text[~observed] = "NA"
    return text
