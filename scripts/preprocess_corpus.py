"""Preprocess a folder of videos (LRW-style word clips, or any .mp4) into a corpus of person clips,
in shards fanned out by a Hydra launcher; rerunning resumes. docs/real-data.md.

    python scripts/preprocess_corpus.py src=DIR out=DIR [shards=N] [detector=...] [device=cuda]
    python scripts/preprocess_corpus.py --multirun src=DIR out=DIR shards=8 hydra/launcher=corpus_joblib
    python scripts/preprocess_corpus.py --multirun src=DIR out=DIR shards=64 hydra/launcher=corpus_slurm
"""

from talkinghead.cli import run_hydra_cli
from talkinghead.preprocess.corpus import preprocess_corpus_from_config

if __name__ == "__main__":
    run_hydra_cli("preprocess_corpus", preprocess_corpus_from_config)
