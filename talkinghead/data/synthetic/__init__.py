"""The synthetic talking-head world: a built-in corpus on which every stage can be trained,
run and measured on CPU, with no downloads.

Modules, in the order the data flows:

* :mod:`.speech` - phoneme timelines and source-filter speech audio (16 kHz);
* :mod:`.mouth` - phonemes -> mouth units with co-articulation, the mouth leading the sound;
* :mod:`.motion` - personal head-pose styles (tilt, amplitude, rhythm, nods on stress), blinks, brows;
* :mod:`.people` - persons sampled from a seed (face coefficients, voice, pose style, appearance);
* :mod:`.frames` - the plain 3DMM render and the "real" frame (skin detail, key light, hair,
  neck, teeth, background, camera noise);
* :mod:`.world` - per-frame coefficients, person clips, corpora, the CLI body.

    from talkinghead.data.synthetic import make_corpus
    make_corpus("data/synthetic", persons=20, frames=400, seed=0, heldout=4)
"""

from talkinghead.data.synthetic.people import Person, sample_people
from talkinghead.data.synthetic.world import PersonSignals, make_corpus, make_person, person_signals, write_preview

__all__ = ["Person", "PersonSignals", "make_corpus", "make_person", "person_signals", "sample_people", "write_preview"]
