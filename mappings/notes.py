"""Note <-> FHIR Annotation (https://hl7.org/fhir/R4/datatypes.html#Annotation)."""

from __future__ import annotations

from mappings.datatypes import Json, prune
from mappings.refs import Refs, Resolver
from service.domain.types import Note


def note_to_fhir(note: Note, refs: Refs, path: str) -> Json:
    """Return an Annotation; a team author becomes authorReference, a named one authorString."""
    return prune(
        {
            "authorReference": refs.member(note.author_member, f"{path}.author_member") if note.author_member else None,
            "authorString": note.author_name,
            "time": note.time,
            "text": note.text,
        }
    )


def note_from_fhir(data: Json, resolver: Resolver) -> Note:
    """Return a note from an Annotation."""
    author = data.get("authorReference")
    return Note(
        text=data.get("text", ""),
        author_member=resolver.member_for(author) if author else None,
        author_name=data.get("authorString"),
        time=data.get("time"),
    )


def note_is_modelled(data: Json, resolver: Resolver) -> bool:
    """Tell whether an Annotation fits the model (its author, if a reference, is a person; nothing else)."""
    author = data.get("authorReference")
    return set(data) <= {"authorReference", "authorString", "time", "text"} and (
        author is None or resolver.is_person(author)
    )
