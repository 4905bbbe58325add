"""Every key of the configuration schema has a reader: a setting nothing reads is a promise the
node does not keep (``dispatch.return_to_sender`` once was one).

Walks the pydantic schema of ``config.yaml`` and looks, in the source of ``dicomnode`` (and
``converters``, which gets some settings as arguments), for an attribute access or a keyword
argument of each key's name outside the schema's own field declarations. A key read only
dynamically must be listed in ``DYNAMIC`` with where it is read.
"""

from __future__ import annotations

import ast
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from dicomnode.config import Config

ROOT = Path(__file__).resolve().parent.parent

#: Keys read through a computed name, with the reader.
DYNAMIC = {
    # ModelsConfig.pipeline_options: getattr(self, pipeline.replace("-", "_"))
    "models.totalspineseg": "ModelsConfig.pipeline_options",
}


def _models_in(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


def schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, field name) of every key, sections and leaves alike."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, name
        for inner in _models_in(field.annotation):
            yield from schema_keys(inner, f"{key}.")


def names_read() -> set[str]:
    """Attribute names accessed and keyword argument names passed anywhere in the source."""
    found: set[str] = set()
    for package in ("dicomnode", "converters"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute):
                    found.add(node.attr)
                elif isinstance(node, ast.keyword) and node.arg:
                    found.add(node.arg)
    return found


def test_every_configuration_key_is_read() -> None:
    read = names_read()
    unread = [key for key, name in schema_keys(Config) if name not in read and key not in DYNAMIC]
    assert not unread, f"configuration keys nothing reads: {unread}"


def test_the_walk_reaches_nested_sections() -> None:
    keys = {key for key, _ in schema_keys(Config)}
    assert {"dispatch.return_to_sender", "node.tls.require_client_certificate",
            "routing.rules.match.slices.max", "destinations.tls.enabled",
            "results.seg_type", "dispatch.return_to.host"} <= keys


def test_an_unread_key_is_caught() -> None:
    class Probe(BaseModel):
        nothing_reads_this_key_anywhere: bool = False

    assert [k for k, n in schema_keys(Probe) if n not in names_read()] == [
        "nothing_reads_this_key_anywhere"]
