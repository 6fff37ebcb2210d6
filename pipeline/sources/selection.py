"""Brain-MRI selection: a DICOM header in, the rule that says whether the object is scored or skipped out.

A hospital archive holds CT, radiographs, spine and knee MRI, localizers, secondary captures and reports next to
brain MRI; only brain MRI may reach the model. The rules are data (``selection_rules.yaml`` beside this module, or a
site's own file): an ordered list of rules, each a set of conditions on DICOM keywords (values, regular expressions,
ranges), an action (``skip`` or ``score``) and a reason. The first rule that holds decides; an object no rule
decides is scored. The decoding stage (``pipeline.scoring.stages``) asks before it decodes any pixels, records the rule's
name on every row and, for a skip, the reason with ``status = skipped``. Plain JPEG/PNG files have no header: they
are scored under :data:`NO_HEADER` and the out-of-distribution check judges them.

A reason quotes header text in two ways only: ``{matched}``, the text a rule's own regular expression found, and
``{value}``, the element's value checked against the format its VR allows (``model.header_values``: a code string
of at most 16 upper-case letters, digits, spaces and underscores, a date, a number, a UID). A value that fails its
format is quoted as a marker such as "(invalid code string)", and free text (a description, a comment) as "(free
text, not quoted)": a mis-filled header cannot carry a name into ``skip_reason``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Mapping

import yaml

from infra import storage
from model.header_values import quotable

DEFAULT_RULES_URI = str(pathlib.Path(__file__).with_name("selection_rules.yaml"))
ALL = "all"  # --selection-rules all: every image object is scored, as before selection existed
NO_HEADER = "no_header"  # the selection_rule of a JPEG/PNG row: nothing to select on
SCORE_EVERYTHING = "score_everything"  # the selection_rule of a DICOM row scored under --selection-rules all
SKIP, SCORE = "skip", "score"
# a rule may not look at who the patient is: its reason would carry identity into the tables
IDENTITY_KEYWORDS = frozenset({
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthDate", "PatientBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "AccessionNumber", "MedicalRecordLocator", "IssuerOfPatientID", "ReferringPhysicianName", "InstitutionName"})
TESTS = ("equals", "not_in", "matches", "not_matches", "range", "present")


class SelectionRulesError(ValueError):
    """A rules file that cannot be used; the message names the file, the rule and what to fix."""


def as_texts(value: Any) -> list[str]:
    """An element's value as a list of stripped strings (one per value of a multi-valued element)."""
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(item).strip() for item in values if str(item).strip()]


def as_number(value: Any) -> float | None:
    try:
        return float(value[0] if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def quoted_value(keyword: str, value: Any) -> str:
    """An element's value as a reason may quote it: each of its values in the format its VR allows, or a marker
    (``model.header_values.quotable``); "missing" when it has none."""
    return "\\".join(quotable(keyword, text) for text in as_texts(value)) or "missing"


@dataclasses.dataclass(frozen=True)
class Condition:
    """One test on one DICOM keyword; ``check`` returns whether it holds and the text a ``matches`` found."""

    keyword: str
    test: str
    argument: Any

    def check(self, value: Any) -> tuple[bool, str | None]:
        texts = as_texts(value)
        if self.test == "present":
            return bool(texts) == bool(self.argument), None
        if self.test == "equals":
            return any(text.upper() in self.argument for text in texts), None
        if self.test == "not_in":
            return not any(text.upper() in self.argument for text in texts), None
        if self.test == "range":
            number, (low, high) = as_number(value), self.argument
            return number is not None and (low is None or number >= low) and (high is None or number <= high), None
        found = next((match for match in map(self.argument.search, texts) if match), None)
        if self.test == "not_matches":
            return found is None, None
        return found is not None, found.group(0) if found else None


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the rules said of one object: the deciding rule's name, its action and the reason, filled in."""

    rule: str
    action: str
    reason: str

    @property
    def skips(self) -> bool:
        return self.action == SKIP


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    action: str
    reason: str
    all_of: tuple[Condition, ...] = ()
    any_of: tuple[Condition, ...] = ()

    def decide(self, attributes: Mapping[str, Any]) -> Decision | None:
        """This rule's decision when it holds for ``attributes``, else None."""
        holds, decision = self.assess(attributes)
        return decision if holds else None

    def assess(self, attributes: Mapping[str, Any], known: frozenset[str] | None = None
               ) -> tuple[bool | None, Decision | None]:
        """(whether the rule holds, its decision when it does), judged on the ``known`` keywords alone (all when
        None): None when it turns on a keyword not known (a condition on it may go either way)."""
        quoted: dict[str, str] = {}

        def state(condition: Condition) -> bool | None:
            if known is not None and condition.keyword not in known:
                return None
            return self.holds(condition, attributes, quoted)

        every = [state(condition) for condition in self.all_of]
        if False in every:
            return False, None
        some = [state(condition) for condition in self.any_of]
        if some and all(outcome is False for outcome in some):
            return False, None
        if None in every or (some and True not in some):
            return None, None
        return True, Decision(self.name, self.action, self.reason.format_map(
            {"value": quoted.get("value", "missing"), "matched": quoted.get("matched", "")}))

    @staticmethod
    def holds(condition: Condition, attributes: Mapping[str, Any], quoted: dict[str, str]) -> bool:
        value = attributes.get(condition.keyword)
        holds, matched = condition.check(value)
        if holds:
            quoted.setdefault("value", quoted_value(condition.keyword, value))
            if matched:
                quoted.setdefault("matched", matched)
        return holds


@dataclasses.dataclass(frozen=True)
class SelectionRules:
    """An ordered list of rules; ``decide`` gives the first that holds (an object none decides is scored)."""

    rules: tuple[Rule, ...]
    source: str = DEFAULT_RULES_URI

    def decide(self, attributes: Mapping[str, Any]) -> Decision:
        for rule in self.rules:
            decision = rule.decide(attributes)
            if decision is not None:
                return decision
        return Decision(SCORE_EVERYTHING, SCORE, "no selection rule decided")

    def decide_before_retrieval(self, attributes: Mapping[str, Any], known: frozenset[str]) -> Decision | None:
        """A skip the rules reach on the ``known`` attributes alone (a PACS search's, before the object is
        retrieved), else None: the header decides. Rules are taken in order: one that holds and skips decides; one
        that holds and scores, or that may score but turns on an unknown keyword, leaves it to the header. A skip
        rule that turns on an unknown keyword is passed over: whether or not it holds, the object is skipped when a
        later rule skips it, though its row may then name that later rule (a knee localizer: ``not_head_series``
        from a search, ``localizer`` from its header)."""
        for rule in self.rules:
            holds, decision = rule.assess(attributes, known)
            if holds:
                return decision if decision.skips else None
            if holds is None and rule.action == SCORE:
                return None
        return None

    @property
    def keywords(self) -> tuple[str, ...]:
        """The DICOM keywords the rules read, for the decoder to take from the header."""
        names = {condition.keyword for rule in self.rules for condition in (*rule.all_of, *rule.any_of)}
        return tuple(sorted(names))


def load_rules(uri: str | None = None) -> SelectionRules:
    """The rules at ``uri`` (the bundled default when None; no rules at all for ``"all"``)."""
    if uri == ALL:
        return SelectionRules((), ALL)
    uri = uri or DEFAULT_RULES_URI
    try:
        document = yaml.safe_load(storage.read_bytes(uri))
    except storage.StorageError as error:
        raise SelectionRulesError(f"selection rules {uri} could not be read: {error}") from error
    except yaml.YAMLError as error:
        raise SelectionRulesError(f"selection rules {uri} are not valid YAML: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise SelectionRulesError(f"selection rules {uri} must be a mapping with a list under 'rules'")
    return SelectionRules(tuple(parse_rule(entry, index, uri) for index, entry in enumerate(document["rules"])), uri)


def parse_rule(entry: Any, index: int, uri: str) -> Rule:
    where = f"selection rules {uri}, rule {index + 1}"
    if not isinstance(entry, dict) or not entry.get("name"):
        raise SelectionRulesError(f"{where}: each rule needs a name")
    where = f"{where} ({entry['name']})"
    if entry.get("action") not in (SKIP, SCORE):
        raise SelectionRulesError(f"{where}: action must be {SKIP} or {SCORE}, got {entry.get('action')!r}")
    unknown = set(entry) - {"name", "action", "reason", "all", "any"}
    if unknown:
        raise SelectionRulesError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    reason = str(entry.get("reason") or entry["name"])
    try:
        reason.format_map({"value": "", "matched": ""})
    except (KeyError, ValueError, IndexError) as error:
        raise SelectionRulesError(f"{where}: the reason may quote only {{value}} and {{matched}}") from error
    return Rule(str(entry["name"]), entry["action"], reason,
                tuple(parse_condition(item, where) for item in entry.get("all") or ()),
                tuple(parse_condition(item, where) for item in entry.get("any") or ()))


def parse_condition(item: Any, where: str) -> Condition:
    if not isinstance(item, dict) or "keyword" not in item:
        raise SelectionRulesError(f"{where}: each condition needs a DICOM keyword")
    keyword = str(item["keyword"])
    if keyword in IDENTITY_KEYWORDS:
        raise SelectionRulesError(f"{where}: rules may not match on patient identity ({keyword})")
    tests = [name for name in TESTS if name in item]
    if len(tests) != 1 or set(item) - {"keyword", *TESTS}:
        raise SelectionRulesError(f"{where}: a condition on {keyword} needs exactly one of {', '.join(TESTS)}")
    test = tests[0]
    return Condition(keyword, test, parse_argument(test, item[test], f"{where}, {keyword}"))


def parse_argument(test: str, argument: Any, where: str) -> Any:
    if test in ("matches", "not_matches"):
        try:
            return re.compile(str(argument), re.IGNORECASE)
        except re.error as error:
            raise SelectionRulesError(f"{where}: not a regular expression: {error}") from error
    if test == "range":
        if not isinstance(argument, list) or len(argument) != 2 or not all(
                end is None or isinstance(end, (int, float)) for end in argument):
            raise SelectionRulesError(f"{where}: range must be [low, high], numbers or null")
        return tuple(argument)
    if test == "present":
        return bool(argument)
    values = argument if isinstance(argument, list) else [argument]
    return frozenset(str(value).strip().upper() for value in values)
