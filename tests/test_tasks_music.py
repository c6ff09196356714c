"""Music: the MusicXML reader on hand-written scores, the loader's errors, tokens, MIDI and piano roll, baselines, end to end."""

from __future__ import annotations

import io
import re
import zipfile
from fractions import Fraction

import mido
import numpy as np
import pytest
import torch

from rnnkit import tasks
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig
from rnnkit.tasks import music
from rnnkit.tasks.common import DataError, MarkovModel
from tests.test_tasks_common import require_real_data

# -- writing MusicXML by hand ---------------------------------------------------------------


def note(pitch: str | None, duration: int, *, chord=False, tie: str | None = None, voice: str | None = None, grace=False) -> str:
    """One <note>: ``pitch`` like "C4", "Bb4", "F#5", or None for a rest; ``tie`` "start", "stop" or "both"."""
    parts = ["<grace/>" if grace else "", "<chord/>" if chord else ""]
    if pitch is None:
        parts.append("<rest/>")
    else:
        alter = {"#": "<alter>1</alter>", "b": "<alter>-1</alter>"}.get(pitch[1:-1], "")
        parts.append(f"<pitch><step>{pitch[0]}</step>{alter}<octave>{pitch[-1]}</octave></pitch>")
    parts.append("" if grace else f"<duration>{duration}</duration>")
    parts += [f'<tie type="{t}"/>' for t in {"start": ["start"], "stop": ["stop"], "both": ["stop", "start"]}.get(tie, [])]
    parts.append(f"<voice>{voice}</voice>" if voice else "")
    return "<note>" + "".join(parts) + "</note>"


def score(*measures: str, divisions: int = 2, fifths: int = 0, parts: tuple[str, ...] = ("Soprano",)) -> str:
    """A score-partwise document: the first part holds ``measures``; every other named part holds one whole-note A3."""
    part_list = "".join(f'<score-part id="P{i}"><part-name>{name}</part-name></score-part>' for i, name in enumerate(parts, 1))
    head = f"<attributes><divisions>{divisions}</divisions><key><fifths>{fifths}</fifths></key></attributes>"
    body = "".join(f'<measure number="{i}">{head if i == 1 else ""}{m}</measure>' for i, m in enumerate(measures, 1))
    others = "".join(f'<part id="P{i}"><measure number="1">{head}{note("A3", 4 * divisions)}</measure></part>' for i in range(2, len(parts) + 1))
    return (f'<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list>{part_list}</part-list>'
            f'<part id="P1">{body}</part>{others}</score-partwise>')  # fmt: skip


def events(xml: str, source: str = "t.musicxml") -> list[tuple[int | None, Fraction]]:
    return music.read_melody(xml.encode(), source).events


def compressed(xml: str, container: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        if container:
            z.writestr("META-INF/container.xml", '<container><rootfiles><rootfile full-path="music/s.xml"/></rootfiles></container>')
        z.writestr("music/s.xml", xml)
    return buffer.getvalue()


# -- the reader ---------------------------------------------------------------------------------


def test_durations_are_scaled_by_divisions_and_pitches_read_with_alter():
    xml = score(note("C4", 2) + note("Bb4", 1) + note(None, 4) + note("F#5", 3),
                "<attributes><divisions>3</divisions></attributes>" + note("E5", 1) + note("D5", 5), divisions=2)  # fmt: skip
    q = Fraction
    assert events(xml) == [(60, q(1)), (70, q(1, 2)), (None, q(2)), (78, q(3, 2)), (76, q(1, 3)), (74, q(5, 3))]


def test_ties_merge_and_chords_keep_their_top_note():
    xml = score(note("C5", 4, tie="start") + note("C5", 2, tie="both") + note("C5", 1, tie="stop")  # one note of 3.5 quarters
                + note("E4", 2) + note("C5", 2, chord=True) + note("G4", 2, chord=True)  # the top of the chord
                + note("D5", 2, tie="stop")  # a "tie" from another pitch starts a new note
                + note("D5", 1).replace("</note>", '<notations><tied type="stop"/></notations></note>')  # a tie drawn only
                + note("D5", 2) + note(None, 1) + note(None, 1) + note("B4", 2) + note("A4", 0, grace=True))  # rests merge; no grace notes
    assert events(xml) == [(72, Fraction(7, 2)), (72, Fraction(1)), (74, Fraction(3, 2)), (74, Fraction(1)), (None, Fraction(1)), (71, Fraction(1))]


def test_backup_and_forward_move_the_clock_and_only_the_first_voice_is_kept():
    xml = score(note(None, 2, voice="1") + note("E5", 2, voice="1") + "<forward><duration>2</duration></forward>" + note("G5", 2, voice="1")
                + "<backup><duration>8</duration></backup>" + note("C4", 8, voice="2"))  # fmt: skip
    # the leading rest goes; the forward leaves a rest; the second voice is not the melody
    assert events(xml) == [(76, Fraction(1)), (None, Fraction(1)), (79, Fraction(1))]


def test_the_soprano_part_is_the_melody_else_the_first_part():
    melody = music.read_melody(score(note("G4", 2), parts=("Horn 1", "Soprano")).encode(), "s.xml")
    assert melody.part == "Soprano" and melody.events == [(57, Fraction(4))]  # the helper gives other parts an A3
    melody = music.read_melody(score(note("G4", 2), parts=("Violin", "Alto")).encode(), "s.xml")
    assert melody.part == "Violin" and melody.events == [(67, Fraction(1))]


def test_compressed_mxl_holds_the_same_score_with_or_without_a_container():
    xml = score(note("C4", 2) + note("E4", 2), fifths=-3)
    expected = music.read_melody(xml.encode(), "s.xml")
    assert music.read_melody(compressed(xml), "s.mxl") == expected == music.read_melody(compressed(xml, container=False), "s.mxl")
    assert expected.fifths == -3


SOPRANO = r", part 'Soprano'"


@pytest.mark.parametrize("name,content,message", [
    ("empty.xml", b"  \n", r": expected MusicXML, found an empty file"),
    ("broken.xml", b"<score-partwise><part>", r": expected MusicXML \(well-formed XML\), found an XML error: no element found"),
    ("page.xml", b"<html><body/></html>", r": expected a MusicXML <score-partwise> document, found <html>"),
    ("text.mxl", b"just some text", r": expected a compressed MusicXML \(.mxl\) zip, found bytes b'just som'"),
    ("other.mxl", "zip:readme.txt", r": expected a MusicXML file inside the .mxl zip, found \['readme.txt'\]"),
    ("noparts.xml", b"<score-partwise><part-list/></score-partwise>", r": expected a <part>, found none"),
    ("rests.xml", score(note(None, 4)).encode(), SOPRANO + r": expected at least one pitched <note>, found none"),
    ("nodiv.xml", score(note("C4", 2)).replace("<divisions>2</divisions>", "").encode(),
     SOPRANO + r", measure 1: expected <divisions> before the first <note>, found none"),
    ("zerodiv.xml", score(note("C4", 2), divisions=0).encode(), SOPRANO + r", <divisions>: expected a whole number of at least 1, found '0'"),
    ("nodur.xml", score(note("C4", 2)).replace("<duration>2</duration>", "").encode(),
     SOPRANO + r", measure 1: expected a <duration> in <note>, found none"),
    ("step.xml", score(note("H4", 2)).encode(),
     SOPRANO + r", measure 1: expected <pitch> with a <step> A-G and an <octave>, or <rest/>, found step='H'"),
    ("backup.xml", score(note("C4", 2) + "<backup><duration>3</duration></backup>").encode(),
     SOPRANO + r", measure 1: expected <backup> within the measure, found one before the start"),
])  # fmt: skip
def test_bad_files_are_rejected_naming_the_file_what_was_expected_and_found(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "zip:readme.txt":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "no music here")
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(str(path)) + message):
        music.read_melodies(music.DataConfig(path=str(path)))


def test_bad_folders_are_rejected(tmp_path):
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'nope'))}: expected a folder of MusicXML files \(.mxl, .musicxml, .xml\) or one such file, found nothing"):
        music.read_melodies(music.DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "notes.txt").write_text("C D E")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))}: expected MusicXML files \(.mxl, .musicxml, .xml\) in the folder, found none \(1 other files\)"):
        music.read_melodies(music.DataConfig(path=str(tmp_path)))
    for i in range(5):  # five files, but two tunes: the same opening in different rhythms
        (tmp_path / f"{i}.xml").write_text(score(note("C5", 2 + i) + note("D5", 2), note("E5" if i < 3 else "F5", 2)))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: expected melodies of at least 3 tunes (different first 8 pitches; "
                                                  "data.tune_prefix=0 to split melodies alone) for train, validation and test, "
                                                  "found 5 melodies of 2 tunes")):  # fmt: skip
        music.load_split(music.DataConfig(path=str(tmp_path)))
    split = music.load_split(music.DataConfig(path=str(tmp_path), tune_prefix=0, test_fraction=0.2, val_fraction=0.2))
    assert (len(split.train), len(split.val), len(split.test)) == (3, 1, 1)


def test_one_file_is_cut_in_order_into_train_validation_and_test(tmp_path):
    scale = ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5"] * 4
    (tmp_path / "one.xml").write_text(score("".join(note(p, 2) for p in scale)))
    split = music.load_split(music.DataConfig(path=str(tmp_path / "one.xml")))
    assert split.train[0] + split.val[0] + split.test[0] == [f"{p}:1" for p in scale] and len(split.test[0]) == len(split.val[0]) == 3
    (tmp_path / "short.xml").write_text(score(note("C4", 2) * 7))
    with pytest.raises(DataError, match=r"short.xml: expected a melody long enough for train, validation and test parts, found 7 note events"):
        music.load_split(music.DataConfig(path=str(tmp_path / "short.xml")))


# -- tokens ------------------------------------------------------------------------------------


def test_tokens_are_transposed_to_c_and_durations_rounded_to_the_grid():
    melody = music.Melody([(65, Fraction(1)), (None, Fraction(1, 2)), (70, Fraction(1, 3)), (77, Fraction(3, 2))], fifths=-1, part="S")
    assert music.event_names(melody, grid=4, transpose=True) == ["C4:1", "R:0.5", "F4:0.25", "C5:1.5"]  # F major down a fourth
    assert music.event_names(melody, grid=3, transpose=False) == ["F4:1", "R:2/3", "A#4:1/3", "F5:4/3"]  # 4.5 steps round to even
    sharp = music.Melody([(62, Fraction(1))], fifths=2, part="S")  # D major goes down a tone, not up a minor seventh
    assert music.event_names(sharp, 4, True) == ["C4:1"]
    assert [music.parse_event(n, 4) for n in ("C#5:1.5", "Bb4:1/2", "R:2", "G4")] == [(73, 6), (70, 2), (None, 8), (67, 4)]
    with pytest.raises(DataError, match=r"note event: expected a pitch such as C#5 or Bb4, or R for a rest, .* got 'H4:1'"):
        music.parse_event("H4:1", 4)


def test_batches_hold_every_melody_once_per_epoch_padded_to_their_own_longest():
    melodies = [[2 + i % 5] * (1 + (i * 7) % 23) for i in range(37)]
    source = music.MelodyBatches(melodies, batch_size=4, seed=3, pool=3)
    epoch = list(source.batches(1))
    assert len(epoch) == len(source) == 10
    seen = sorted(tuple(row[row > 0].tolist()) for inputs, _ in epoch for row in inputs)
    assert seen == sorted(tuple(m) for m in melodies)
    for inputs, targets in epoch:
        lengths = (targets != -100).sum(1)
        assert inputs.shape[1] == lengths.max() and (targets[torch.arange(len(lengths)), lengths - 1] == 0).all()  # closed by "|"
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, source.batches(1), strict=True))  # a function of (seed, epoch)
    assert not all(a[0].shape == b[0].shape and torch.equal(a[0], b[0]) for a, b in zip(epoch, source.batches(2), strict=True))


# -- scores: the RNN against a per-melody loop, the Markov models against hand counts ---------------------


def test_rnn_scores_match_one_melody_at_a_time():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(9, 8, RecurrentConfig(cell="gru", hidden_size=8))).eval()
    melodies = [[2, 5, 3], [4, 4, 8, 7, 1, 2, 6], [8]]
    nll, accuracy = music.rnn_scores(model, melodies)
    log_ps, hits = [], []
    with torch.no_grad():
        for m in melodies:
            logits, _ = model(torch.tensor([[0, *m]]))
            log_ps += [logits[0, i].log_softmax(-1)[x].item() for i, x in enumerate(m)]
            hits += [logits[0, i].argmax().item() == x for i, x in enumerate(m)]
    assert nll == pytest.approx(-np.mean(log_ps), rel=1e-5) and accuracy == pytest.approx(np.mean(hits))


def test_markov_counts_skip_the_padding_between_melodies():
    train = [[2, 3, 2], [3, 3]]
    ids, counted, scored = music.markov_stream(train, order=2)
    assert ids.tolist() == [0, 0, 2, 3, 2, 0, 0, 0, 3, 3, 0] and scored.tolist() == [2, 3, 4, 8, 9]
    model = MarkovModel(ids, 2, vocab_size=4, counted=counted)
    # unigram, add-one over the counted tokens (2, 3, 2, |, 3, 3, |): p(3) = (3 + 1) / (7 + 4)
    assert model.probabilities(np.array([0, 3]), 0, "add-one")[0] == pytest.approx(4 / 11)
    # after "| |" only 2 and 3 have followed, once each: Witten-Bell gives (1 + 2 p1(2)) / (2 + 2) with p1 from "|"
    p = model.probabilities(np.array([0, 0, 2]), 2, "Witten-Bell")[-1]
    p0 = 3 / 11  # add-one unigram of 2
    p1 = (1 + 2 * p0) / (2 + 2)  # after "|": 2 and 3 once each (the pads before a melody are contexts, never targets)
    assert p == pytest.approx((1 + 2 * p1) / (2 + 2))
    context = np.array([0, 0, 3, 3, 0])
    distribution = [model.probabilities(context, 2, "Witten-Bell", np.array([4]), candidate=x)[0] for x in range(4)]
    assert sum(distribution) == pytest.approx(1.0) and model.predict(context, 2, "Witten-Bell", np.array([4]))[0] == np.argmax(distribution)


# -- MIDI and the piano roll --------------------------------------------------------------------


def test_midi_round_trip_keeps_pitches_order_and_durations(tmp_path):
    events = [(60, 4), (None, 2), (64, 2), (67, 8), (None, 3)]  # in sixteenths: a quarter, a rest of an eighth, ...
    music.write_midi(tmp_path / "m.mid", events, grid=4, tempo=90)
    midi = mido.MidiFile(tmp_path / "m.mid")
    assert midi.type == 0 and midi.ticks_per_beat == 480 and len(midi.tracks) == 1
    messages = list(midi.tracks[0])
    assert [m.tempo for m in messages if m.type == "set_tempo"] == [mido.bpm2tempo(90)]
    notes = [(m.type, m.note, m.time) for m in messages if m.type in ("note_on", "note_off")]
    assert notes == [("note_on", 60, 0), ("note_off", 60, 480), ("note_on", 64, 240), ("note_off", 64, 240), ("note_on", 67, 0), ("note_off", 67, 960)]
    assert midi.length == pytest.approx((1 + 0.5 + 0.5 + 2 + 0.75) * 60 / 90)  # the closing rest counts too


def test_piano_roll_marks_onsets_and_the_png_has_the_asked_size(tmp_path):
    import matplotlib.image

    roll, lowest = music.piano_roll([(62, 3), (None, 2), (62, 1), (65, 2)])
    assert lowest == 62 and roll.shape == (4, 8)
    assert roll[0].tolist() == [2, 1, 1, 0, 0, 2, 0, 0] and roll[3].tolist() == [0] * 6 + [2, 1] and not roll[1:3].any()
    music.plot_piano_roll(tmp_path / "r.png", [(62, 3), (None, 2), (62, 1), (65, 2)], 4, "t", size=(6, 3), dpi=50)
    assert matplotlib.image.imread(tmp_path / "r.png").shape[:2] == (150, 300)


# -- end to end ---------------------------------------------------------------------------------------


def write_corpus(folder, count: int = 40, seed: int = 0) -> None:
    """Melodies an RNN can learn: random chains of scale runs and arpeggios in C, G and F, in quarters and eighths."""
    rng = np.random.default_rng(seed)
    motifs = [["C4", "D4", "E4", "F4"], ["G4", "F4", "E4", "D4"], ["C4", "E4", "G4", "C5"], ["C5", "G4", "E4", "C4"]]
    shifts = {0: 0, 1: -5, -1: 5}  # fifths -> the tonic, G3 or F4, which the loader moves back to C4
    folder.mkdir()
    for i in range(count):
        fifths = int(rng.integers(-1, 2))
        pitches = [p for m in rng.integers(0, 4, 6) for p in motifs[m]]
        notes = "".join(note(transpose(p, shifts[fifths]), 2 if k % 4 < 2 else 1) for k, p in enumerate(pitches))
        (folder / f"m{i:02}.musicxml").write_text(score(notes, fifths=fifths))


def transpose(name: str, semitones: int) -> str:
    midi = 12 * (int(name[-1]) + 1) + music.STEPS[name[0]] + semitones
    return music.NAMES[midi % 12] + str(midi // 12 - 1)


def test_trains_end_to_end_and_beats_the_unigram_baseline(tmp_path):
    write_corpus(tmp_path / "corpus")
    task = tasks.get("music")
    config = task.config("fast", ["trainer.max_epochs=30", "optim.lr=0.02", "trainer.progress=False", "batch_size=8"], data=str(tmp_path / "corpus"))
    report = task.train(config, tmp_path / "run", say=lambda message: None)
    rnn, unigram = report.rows["GRU language model"], report.rows["unigram, add-one"]
    # the stated check: 1.5 nats per note event better than the unigram (2.45), and three times its next-event accuracy (0.17)
    assert rnn["NLL (nats/event)"] < unigram["NLL (nats/event)"] - 1.5 and rnn["accuracy"] > 3 * unigram["accuracy"]
    assert report.plots[0] == "sample.png" and (tmp_path / "run" / "sample.png").is_file()
    assert len(mido.MidiFile(tmp_path / "run" / "sample.mid").tracks[0]) > 16
    assert music.evaluate(config, tmp_path / "run").rows == report.rows
    message = music.generate(config, tmp_path / "run", "C4:0.5 D4:0.5", temperature=0.5, length=12, seed=1)
    names, files = message.split("\nMIDI file: ")
    assert names.split()[:2] == ["C4:0.5", "D4:0.5"] and len(names.split()) == 14
    midi = mido.MidiFile(files.split("\n")[0])
    assert [m.note for m in midi.tracks[0] if m.type == "note_on"][:2] == [60, 62]
    with pytest.raises(DataError, match=r"prime: expected note events of the training vocabulary \(such as 'C5:1'\), got \['C#4:1'\]"):
        music.generate(config, tmp_path / "run", "C#4")


def test_the_real_chorales_are_read_and_split_by_tune():
    require_real_data(music.WHEEL)
    named = music.read_melodies(music.DataConfig())
    melodies = dict(named)
    assert len(melodies) == 407 and "bwv846" not in melodies  # a keyboard prelude, no soprano
    first = melodies["bwv1.6"]  # "Wie schön leuchtet der Morgenstern", F major: a horn part comes before the soprano
    assert first.part == "Soprano" and first.fifths == -1 and [p for p, _ in first.events[:8]] == [65, 72, 69, 65, 72, 74, 74, 72]
    split = music.load_split(music.DataConfig(), named)
    tunes = [{tuple(e.split(":")[0] for e in m[:8]) for m in melodies} for melodies in (split.train, split.val + split.test)]
    assert not tunes[0] & tunes[1]
    assert 300 < len(split.train) < 330 and 35 < len(split.test) < 50 and all(len(m) >= 20 for m in split.test)
