"""ObjectMeta validation as kube-apiserver's ValidateObjectMetaAccessor does it (apimachinery
pkg/api/validation and pkg/util/validation): names per kind, generateName, label keys and values, annotation
keys and total size; messages worded as the real server words them."""

from __future__ import annotations

import json
import re
from typing import Callable, Optional

_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_NAME_MSG = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                       "alphanumeric character")
_LABEL_VALUE_FMT = f"({_QUALIFIED_NAME_FMT})?"
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character")
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                      "must start and end with an alphanumeric character")
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                          "'.', and must start and end with an alphanumeric character")
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_LABEL_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                      "alphabetic character, and end with an alphanumeric character")
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def _full(fmt: str) -> re.Pattern:
    return re.compile(f"^(?:{fmt})$")


_QUALIFIED_NAME = _full(_QUALIFIED_NAME_FMT)
_LABEL_VALUE = _full(_LABEL_VALUE_FMT)
_DNS1123_LABEL = _full(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN = _full(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL = _full(_DNS1035_LABEL_FMT)


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """apimachinery's RegexError, examples and all."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{example}'," for example in examples)
    return f"{message} (e.g. {shown} regex used for validation is '{fmt}')"


def _max_len(limit: int) -> str:
    return f"must be no more than {limit} characters"


def dns1123_subdomain(value: str) -> list[str]:
    errors = [_max_len(253)] if len(value) > 253 else []
    if not _DNS1123_SUBDOMAIN.match(value):
        errors.append(_regex_error(_DNS1123_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def dns1123_label(value: str) -> list[str]:
    errors = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1123_LABEL.match(value):
        if _DNS1123_SUBDOMAIN.match(value):
            errors.append("must not contain dots")  # a valid subdomain of valid length: it has dots
        else:
            errors.append(_regex_error(_DNS1123_LABEL_MSG, _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errors


def dns1035_label(value: str) -> list[str]:
    errors = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL.match(value):
        errors.append(_regex_error(_DNS1035_LABEL_MSG, _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errors


def qualified_name(value: str) -> list[str]:
    """IsQualifiedName: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    errors: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += [f"prefix part {message}" for message in dns1123_subdomain(prefix)]
    else:
        return [f"a qualified name {_regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, 'MyName', 'my.name', '123-abc')}"
                " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append(f"name part {_max_len(63)}")
    if not _QUALIFIED_NAME.match(name):
        errors.append("name part " + _regex_error(_QUALIFIED_NAME_MSG, _QUALIFIED_NAME_FMT, "MyName", "my.name",
                                                  "123-abc"))
    return errors


def label_value(value: str) -> list[str]:
    errors = [_max_len(63)] if len(value) > 63 else []
    if not _LABEL_VALUE.match(value):
        errors.append(_regex_error(_LABEL_VALUE_MSG, _LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def path_segment_name(value: str) -> list[str]:
    """IsValidPathSegmentName: what every name must be to fit in a URL path."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{char}'" for char in ("/", "%") if char in value]


NameRule = Callable[[str], list[str]]

# The name rule of each built-in the emulator serves, as its registry's strategy validates it (pkg/apis/core/
# validation: ValidateServiceName is DNS-1035, ValidateNamespaceName DNS-1123 label; most others subdomain).
# Custom resources are DNS-1123 subdomains (apiextensions' customResourceValidator).
_NAME_RULES: dict[tuple[str, str], NameRule] = {
    ("", "services"): dns1035_label,
    ("", "namespaces"): dns1123_label,
    ("", "events"): path_segment_name,  # core/v1 events skip name validation for backwards compatibility
}


def name_rule(key: tuple[str, str]) -> NameRule:
    return _NAME_RULES.get(key, dns1123_subdomain)


def _mask_trailing_dash(prefix: str) -> str:
    """apimachinery's maskTrailingDash: a generateName may end in '-', since characters are appended to it."""
    return prefix[:-2] + "a" if len(prefix) > 1 and prefix.endswith("-") else prefix


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def validate_object_meta(meta: dict, rule: NameRule, extra_name_rule: Optional[NameRule] = None) -> list[str]:
    """Field errors ("metadata.name: Invalid value: ...") in ValidateObjectMetaAccessor's order."""
    errors: list[str] = []

    def check_name(field: str, value: str, masked: str) -> None:
        messages = rule(masked) + (extra_name_rule(value) if extra_name_rule else [])
        errors.extend(f"metadata.{field}: Invalid value: {_quoted(value)}: {message}" for message in messages)

    generate_name = meta.get("generateName")
    if isinstance(generate_name, str) and generate_name:
        check_name("generateName", generate_name, _mask_trailing_dash(generate_name))
    name = meta.get("name")
    if not name:
        errors.append("metadata.name: Required value: name or generateName is required")
    elif isinstance(name, str):
        check_name("name", name, name)
    labels = meta.get("labels") or {}
    if isinstance(labels, dict):
        for key in sorted(labels):  # Go walks the map in random order; sorted is one of its orders
            errors += [f"metadata.labels: Invalid value: {_quoted(key)}: {m}" for m in qualified_name(key)]
            value = labels[key]
            if isinstance(value, str):
                errors += [f"metadata.labels: Invalid value: {_quoted(value)}: {m}" for m in label_value(value)]
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict):
        for key in sorted(annotations):
            # The rule is QualifiedName except that case does not matter (ValidateAnnotations).
            errors += [f"metadata.annotations: Invalid value: {_quoted(key)}: {m}"
                       for m in qualified_name(key.lower())]
        size = sum(len(key.encode()) + len(str(value).encode()) for key, value in annotations.items())
        if size > TOTAL_ANNOTATION_SIZE_LIMIT:
            errors.append(f"metadata.annotations: Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes")
    return errors


def crd_name_rule(crd: dict) -> NameRule:
    """A CustomResourceDefinition's name must be <plural>.<group> (apiextensions validation)."""
    spec = crd.get("spec") or {}
    required = f"{(spec.get('names') or {}).get('plural', '')}.{spec.get('group', '')}"
    return lambda name: [] if name == required else ['must be spec.names.plural+"."+spec.group']
