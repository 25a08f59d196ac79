"""AirGPT-style chain-of-thought rationales (Li, Chen, Xu, Information Fusion 2025): a teacher that sees a window's
history and its true future writes five labelled stages arriving at that future; validated, cached, and later learnt
by a student LLM. Modules: :mod:`.stages` (text form), :mod:`.facts` (what a teacher may know), :mod:`.teachers`
(analytic and LLM teachers), :mod:`.validate` (acceptance rules), :mod:`.build` (cached building with fallback)."""

from st_instruct.samples.rationales.build import (
    RationaleCache,
    RationaleReport,
    build_rationales,
    cache_key,
    default_rationale_cache_dir,
)
from st_instruct.samples.rationales.facts import (
    CITY_MEAN,
    StationFacts,
    WindowFacts,
    compass_name,
    relative_humidity,
    window_facts,
)
from st_instruct.samples.rationales.stages import STAGE_TITLES, RationaleParseError, format_rationale, parse_rationale
from st_instruct.samples.rationales.teachers import AnalyticTeacher, LLMTeacher, conclusion_line
from st_instruct.samples.rationales.validate import (
    REJECTION_REASONS,
    Tolerance,
    format_conclusion,
    leaked_numbers,
    parse_conclusion,
    validate_rationale,
)

__all__ = [
    "CITY_MEAN", "REJECTION_REASONS", "STAGE_TITLES", "AnalyticTeacher", "LLMTeacher", "RationaleCache",
    "RationaleParseError", "RationaleReport", "StationFacts", "Tolerance", "WindowFacts", "build_rationales",
    "cache_key", "compass_name", "conclusion_line", "default_rationale_cache_dir", "format_conclusion",
    "format_rationale", "leaked_numbers", "parse_conclusion", "parse_rationale", "relative_humidity",
    "validate_rationale", "window_facts",
]
