"""MusicXML for :mod:`rnnkit.tasks.music`: a score's melody part read as (pitch, duration) notes, and note events named and parsed."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
import zipfile
from fractions import Fraction
from typing import NamedTuple


from rnnkit.tasks.common import DataError

SUFFIXES = (".mxl", ".musicxml", ".xml")
BOUNDARY, UNKNOWN = "|", "?"  # ids 0 and 1: the start and end of a melody; any rarer event
STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]

# -- reading MusicXML ------------------------------------------------------------------------


class Melody(NamedTuple):
    """One line of music: ``(MIDI pitch or None for a rest, duration in quarter notes)`` events."""

    events: list[tuple[int | None, Fraction]]
    fifths: int  # the first key signature: sharps (> 0) or flats (< 0)
    part: str  # the part's name


def read_melody(raw: bytes, source: str) -> Melody:
    """The melody of a MusicXML file (``.musicxml``/``.xml``) or of a compressed one (``.mxl``, a zip)."""
    if not raw.strip():
        raise DataError(f"{source}: expected MusicXML, found an empty file")
    part, name = _melody_part(_unzip_score(raw, source) if raw[:2] == b"PK" or source.endswith(".mxl") else raw, source)
    events, fifths = _read_part(part, f"{source}, part {name!r}")
    return Melody(events, fifths, name)


def _melody_part(raw: bytes, source: str) -> tuple[ET.Element, str]:
    """``(part, name)``: the first part named Soprano, else the first part.

    The XML is parsed incrementally and only as far as the end of that part,
    which is usually the first of four: the others are never built.
    """
    parser, root, names, wanted = ET.XMLPullParser(("start", "end")), None, {}, None
    try:
        for start in range(0, len(raw), 1 << 13):
            parser.feed(raw[start : start + (1 << 13)])
            for event, element in parser.read_events():
                if root is None:
                    root = element
                    if root.tag != "score-partwise":
                        raise DataError(f"{source}: expected a MusicXML <score-partwise> document, found <{root.tag}>")
                elif event == "end" and element.tag == "score-part":
                    names[element.get("id")] = " ".join((element.findtext("part-name") or "").split())
                elif event == "start" and element.tag == "part" and wanted is None:
                    wanted = next((i for i, n in names.items() if n.lower().startswith("soprano")), element.get("id"))
                elif event == "end" and element.tag == "part" and element.get("id") == wanted:
                    return element, names.get(wanted) or wanted or "part 1"
        parser.close()
    except ET.ParseError as error:
        raise DataError(f"{source}: expected MusicXML (well-formed XML), found an XML error: {error}") from None
    raise DataError(f"{source}: expected a <part>{f' with id {wanted!r}' if wanted else ''}, found none")


def _unzip_score(raw: bytes, source: str) -> bytes:
    """The score inside an .mxl: the first rootfile that META-INF/container.xml names, else the first .xml in it."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names = archive.namelist()
            path = None
            if "META-INF/container.xml" in names:
                rootfile = _parse_xml(archive.read("META-INF/container.xml"), f"{source}:META-INF/container.xml").find(".//rootfile")
                path = rootfile.get("full-path") if rootfile is not None else None
            path = path or next((n for n in names if n.endswith(SUFFIXES[1:]) and not n.startswith("META-INF/")), None)
            if path not in names:
                raise DataError(f"{source}: expected a MusicXML file inside the .mxl zip, found {names[:5]}")
            return archive.read(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{source}: expected a compressed MusicXML (.mxl) zip, found bytes {raw[:8]!r}... ({error})") from None


def _parse_xml(raw: bytes, source: str) -> ET.Element:
    try:
        return ET.fromstring(raw)
    except ET.ParseError as error:
        raise DataError(f"{source}: expected MusicXML (well-formed XML), found an XML error: {error}") from None


def _read_part(part: ET.Element, source: str) -> tuple[list[tuple[int | None, Fraction]], int]:
    """``(events, fifths)`` of one part: its first voice as a monophonic line (see the module docstring)."""
    clock, onset, divisions, fifths, voice = Fraction(0), Fraction(0), None, None, None
    notes = {}  # onset -> (pitch, duration, tied to the note before): the top note of each chord
    for measure in part.iterfind("measure"):
        for element in measure:
            if element.tag == "attributes":
                if element.findtext("divisions"):
                    divisions = _integer(element.findtext("divisions"), f"{source}, <divisions>", minimum=1)
                if fifths is None and element.findtext("key/fifths"):
                    fifths = _integer(element.findtext("key/fifths"), f"{source}, <key><fifths>")
            elif element.tag in ("backup", "forward"):
                step = _quarters(element, divisions, source, measure)
                clock += step if element.tag == "forward" else -step
                if clock < 0:
                    raise DataError(f"{source}, measure {measure.get('number')}: expected <backup> within the measure, found one before the start")
            elif element.tag == "note" and element.find("grace") is None and element.find("cue") is None:
                duration = _quarters(element, divisions, source, measure)
                if element.find("chord") is None:
                    onset, clock = clock, clock + duration
                voice = voice or element.findtext("voice", "1")
                if element.findtext("voice", "1") != voice:
                    continue
                pitch = None if element.find("rest") is not None else _midi_pitch(element, source, measure)
                tied = any(t.get("type") == "stop" for t in [*element.iterfind("tie"), *element.iterfind("notations/tied")])
                kept = notes.get(onset)
                if kept is None or (pitch is not None and (kept[0] is None or pitch > kept[0])):
                    notes[onset] = (pitch, duration, tied)
    return _melody(notes, source), fifths or 0


def _melody(notes: dict, source: str) -> list[tuple[int | None, Fraction]]:
    """Events in time order: gaps become rests, overlaps are cut, ties merge, adjacent rests merge."""
    events, end = [], Fraction(0)
    for onset in sorted(notes):
        pitch, duration, tied = notes[onset]
        if events and onset < end:  # an overlap within one voice: the earlier note ends where this one starts
            events[-1] = (events[-1][0], events[-1][1] - (end - onset))
            end = onset
        if onset > end:
            events.append((None, onset - end))
        if events and (tied or pitch is None) and events[-1][0] == pitch:
            events[-1] = (pitch, events[-1][1] + duration)
        else:
            events.append((pitch, duration))
        end = onset + duration
    events = [e for e in events if e[1] > 0]
    while events and events[0][0] is None:
        events.pop(0)
    while events and events[-1][0] is None:
        events.pop()
    if not events:
        raise DataError(f"{source}: expected at least one pitched <note>, found none")
    return events


def _quarters(element: ET.Element, divisions: int | None, source: str, measure: ET.Element) -> Fraction:
    where = f"{source}, measure {measure.get('number')}"
    if divisions is None:
        raise DataError(f"{where}: expected <divisions> before the first <{element.tag}>, found none")
    text = element.findtext("duration")
    if text is None:
        raise DataError(f"{where}: expected a <duration> in <{element.tag}>, found none")
    try:
        value = Fraction(text.strip())
    except ValueError:
        raise DataError(f"{where}: expected a number in <duration>, found {text!r}") from None
    if value < 0:
        raise DataError(f"{where}: expected a <duration> of zero or more, found {text!r}")
    return value / divisions


def _midi_pitch(note: ET.Element, source: str, measure: ET.Element) -> int:
    step, octave = note.findtext("pitch/step"), note.findtext("pitch/octave")
    if step not in STEPS or octave is None or not octave.strip().lstrip("-").isdigit():
        raise DataError(f"{source}, measure {measure.get('number')}: expected <pitch> with a <step> A-G and an <octave>, "
                        f"or <rest/>, found step={step!r}, octave={octave!r}")  # fmt: skip
    return 12 * (int(octave) + 1) + STEPS[step] + round(float(note.findtext("pitch/alter") or 0))


def _integer(text: str, source: str, minimum: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        raise DataError(f"{source}: expected a whole number{'' if minimum is None else f' of at least {minimum}'}, found {text!r}")
    return value


def event_names(melody: Melody, grid: int, transpose: bool) -> list[str]:
    """The melody's tokens, e.g. ``["E5:1.5", "R:0.5"]``: durations rounded to the grid, the key moved to C/Am."""
    shift = -(((7 * melody.fifths) + 5) % 12 - 5) if transpose else 0  # the major tonic's pitch class, by the smaller interval
    return [event_name(None if pitch is None else pitch + shift, max(1, round(quarters * grid)), grid) for pitch, quarters in melody.events]


def event_name(pitch: int | None, steps: int, grid: int) -> str:
    quarters = Fraction(steps, grid)
    text = str(quarters) if quarters.denominator & (quarters.denominator - 1) else f"{float(quarters):g}"  # 1.5, but 1/3
    return f"{'R' if pitch is None else NAMES[pitch % 12] + str(pitch // 12 - 1)}:{text}"


def parse_event(name: str, grid: int, argument: str = "note event") -> tuple[int | None, int]:
    """``(MIDI pitch or None, steps)`` of a name such as ``C#5:1.5``, ``Bb4:1/2``, ``R:2`` or ``G4`` (a quarter note)."""
    match = re.fullmatch(r"(?:(R)|([A-G])([#b]?)(-?\d+))(?::([\d./]+))?", name)
    try:
        quarters = Fraction(match.group(5) or "1") if match else None
    except (ValueError, ZeroDivisionError):
        quarters = None
    if quarters is None or quarters <= 0:
        raise DataError(f"{argument}: expected a pitch such as C#5 or Bb4, or R for a rest, then optionally ':' and a duration "
                        f"in quarter notes (E5:1.5), got {name!r}")  # fmt: skip
    steps = max(1, round(quarters * grid))
    if match.group(1):
        return None, steps
    return 12 * (int(match.group(4)) + 1) + STEPS[match.group(2)] + {"#": 1, "b": -1, "": 0}[match.group(3)], steps
