"""Reproduce the paper's comparisons as Markdown tables on the synthetic benchmark (or real data).

    python scripts/reproduce_tables.py [data.root=DIR] [experiment=paper]
"""

from talkinghead.cli import run_cli


def main(cfg):
    from talkinghead.pipeline.tables import reproduce_tables_from_config

    return reproduce_tables_from_config(cfg)


if __name__ == "__main__":
    run_cli("reproduce_tables", main)
