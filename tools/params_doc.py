"""Write docs/parameters.md from the parameter table (or --check that it is current).

    scripts/with_env python tools/params_doc.py          # rewrite docs/parameters.md
    scripts/with_env python tools/params_doc.py --check  # exit 1 when it is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_ros.core.config.params_doc import markdown

PAGE = Path(__file__).resolve().parents[1] / 'docs' / 'parameters.md'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--check', action='store_true', help='exit 1 when the page is stale')
    args = ap.parse_args(argv)
    text = markdown()
    if args.check:
        current = PAGE.read_text(encoding='utf-8') if PAGE.exists() else ''
        if current != text:
            print(f'{PAGE} is stale: run tools/params_doc.py', file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding='utf-8')
    print(f'wrote {PAGE}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
